"""Request ids in every log line.

The id of the request being served (or of the request that queued the running task) is
kept in a context variable; the handler's filter copies it onto every log record, so the
plain format shows it in brackets and the JSON format as a field. Only the standard
library is imported here: the logging configuration loads this module before Django is
set up.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# An incoming X-Request-ID is believed when it is short and plain (what proxies and load
# balancers generate: UUIDs, hex, base64url); anything else gets a fresh id, so a client
# cannot put spaces, newlines or megabytes into the logs.
_SANE_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The incoming id when sane, else a new one."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` ("-" outside a request or task) and `request_tag` (" [id]", or
    nothing) to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or request_id_var.get()
        record.request_id = rid or "-"
        record.request_tag = f" [{rid}]" if rid else ""
        return True
