"""What every page's navigation needs to know about the visitor."""

from __future__ import annotations

from django.http import HttpRequest

from . import links
from .access import user_is_copyright_reviewer, user_is_staff

# The navigation's links, by the name the page uses.
NAV_LINKS = {
    "index": "gallery:index",
    "upload": "gallery:upload",
    "search": "gallery:search",
    "search_words": "gallery:search_words",
    "copyright": "gallery:copyright_queue",
    "admin": "admin:index",
    "operations": "gallery:operations",
    "my_uploads": "gallery:my_uploads",
    "logout": "logout",
    "login": "login",
}


def navigation(request: HttpRequest) -> dict[str, object]:
    """The navigation's links (`nav_urls`), and whether to show those to the review queue,
    the admin and the operations page, shown only to those allowed there."""
    urls = {key: links.reverse_once(name) for key, name in NAV_LINKS.items()}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_urls": urls, "nav_copyright": False, "nav_admin": False}
    return {"nav_urls": urls, "nav_copyright": user_is_copyright_reviewer(user), "nav_admin": user_is_staff(user)}
