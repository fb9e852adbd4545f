"""How large a request body each endpoint accepts, and the middleware that refuses the rest.

Every path gets the room its form needs: the photos it takes (files × the per-file limit,
each with room for its multipart headers) plus the non-file fields. The web server
(imagesearch/webserver.py) applies the same limit while it reads, so an over-limit body is
refused before it is stored anywhere; this middleware is the second line, for a body that
reaches Django some other way (another server, a test client).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

# Room for each file's multipart boundary and part headers.
PART_MARGIN = 64 * 1024


def files_allowed(path: str) -> int:
    """How many photos a request to `path` may carry (0: a form without files)."""
    for pattern, files in settings.REQUEST_BODY_FILES.items():
        if path == pattern or (pattern.endswith("*") and path.startswith(pattern[:-1])):
            return int(files)
    return 0


def body_limit(path: str) -> int:
    """The largest body, in bytes, a request to `path` may send."""
    files = files_allowed(path)
    per_file = int(settings.IMAGESEARCH["MAX_UPLOAD_BYTES"])
    return files * (per_file + PART_MARGIN) + int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) + PART_MARGIN


def largest_body_limit() -> int:
    """The limit of the most generous endpoint (the web server's own upper bound)."""
    return max(body_limit(pattern.rstrip("*")) for pattern in [*settings.REQUEST_BODY_FILES, "/"])


def too_large_response(request: HttpRequest, limit: int) -> HttpResponse:
    """413 in the API's error format for /api/, the error page for everything else."""
    if request.path_info.startswith("/api/"):
        body = {
            "error": {
                "code": "too_large",
                "message": f"The request body is larger than this endpoint accepts ({limit} bytes).",
                "limit": limit,
            }
        }
        response: HttpResponse = JsonResponse(body, status=413)
    else:
        context = {"limit_mb": max(1, limit // (1024 * 1024)), "max_files": files_allowed(request.path_info)}
        response = render(request, "413.html", context, status=413)
    return response


class RequestBodyLimitMiddleware:
    """Refuses a body over its path's limit with 413 before any of it is read.

    A declared Content-Length over the limit is refused at once. A chunked body without a
    length (a server that passes it through) is read up to the limit into a spooled
    temporary file and refused as soon as it goes past it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = body_limit(request.path_info)
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared.isdigit() and int(declared) > limit:
            return too_large_response(request, limit)
        chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not declared and not self._buffer_chunked(request, limit):
            return too_large_response(request, limit)
        return self.get_response(request)

    @staticmethod
    def _buffer_chunked(request: HttpRequest, limit: int) -> bool:
        """Read a length-less body of at most `limit` bytes; False when it is longer."""
        stream = request.META["wsgi.input"]
        spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - becomes the request's stream
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, dir=settings.FILE_UPLOAD_TEMP_DIR
        )
        size = 0
        while True:
            chunk = stream.read(min(64 * 1024, limit + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                spool.close()
                return False
            spool.write(chunk)
        spool.seek(0)
        request.META["CONTENT_LENGTH"] = str(size)
        request._stream = spool  # type: ignore[attr-defined]
        request._read_started = False  # type: ignore[attr-defined]
        return True
