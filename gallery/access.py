"""Who may do what: uploading needs an account (unless the site allows anonymous
uploads), copyright review needs the copyright group, the admin and the operations page
need staff."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

View = Callable[..., HttpResponse]


def user_can_upload(user: Any) -> bool:
    return bool(settings.IMAGESEARCH["ALLOW_ANONYMOUS_UPLOADS"] or user.is_authenticated)


def user_is_copyright_reviewer(user: Any) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser or user.groups.filter(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"]).exists())


def user_is_staff(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def upload_permission_required(view: View) -> View:
    """Anonymous visitors are sent to the sign-in page unless anonymous uploads are allowed."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not user_can_upload(request.user):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapped


def copyright_reviewer_required(view: View) -> View:
    """For the copyright review pages: sign in first, then the copyright group (or a
    superuser); anyone else gets 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user_is_copyright_reviewer(request.user):
            raise PermissionDenied("Copyright review is for the copyright team.")
        return view(request, *args, **kwargs)

    return wrapped


def staff_required(view: View) -> View:
    """For the staff pages outside the admin: sign in first, then staff only; anyone else
    gets 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user_is_staff(request.user):
            raise PermissionDenied("The operations page is for staff.")
        return view(request, *args, **kwargs)

    return wrapped
