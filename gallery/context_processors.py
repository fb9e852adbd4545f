"""What every page's navigation needs to know about the visitor."""

from __future__ import annotations

from django.http import HttpRequest

from .access import user_is_copyright_reviewer, user_is_staff


def navigation(request: HttpRequest) -> dict[str, bool]:
    """Links to the review queue, the admin and the operations page, shown only to those
    allowed there."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_copyright": False, "nav_admin": False}
    return {"nav_copyright": user_is_copyright_reviewer(user), "nav_admin": user_is_staff(user)}
