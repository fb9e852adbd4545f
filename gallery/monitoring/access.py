"""Who may read metrics: a client with the bearer token, a loopback client (unless turned
off), staff signed in. Shared by the web process's /metrics and each worker's exporter."""

from __future__ import annotations

import hmac
import ipaddress
from enum import Enum
from typing import Any


class Access(Enum):
    ALLOWED = "allowed"
    WRONG_TOKEN = "wrong_token"  # 403: a token was sent, and it is not the one
    UNKNOWN = "unknown"  # 404: nothing says who it is


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def metrics_access(*, authorization: str, remote_addr: str, user: Any = None, conf: dict[str, Any]) -> Access:
    token = str(conf.get("METRICS_TOKEN") or "")
    scheme, _, sent = authorization.partition(" ")
    if scheme.lower() == "bearer" and sent:
        if token and hmac.compare_digest(sent.strip().encode(), token.encode()):
            return Access.ALLOWED
        return Access.WRONG_TOKEN
    if conf.get("METRICS_ALLOW_LOOPBACK") and _loopback(remote_addr):
        return Access.ALLOWED
    if user is not None and getattr(user, "is_active", False) and getattr(user, "is_staff", False):
        return Access.ALLOWED
    return Access.UNKNOWN
