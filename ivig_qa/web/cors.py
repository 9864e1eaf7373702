"""Cross-origin checks that tell the operator why a portal is refused: the refused origin is logged.

Browsers enforce CORS and ``frame-ancestors`` silently on the portal's side; without a
line in the server log an operator only hears "the widget does not work". Each refused
origin is logged once (the origin only: no path, no query, no user data).
"""

from __future__ import annotations

from collections import OrderedDict
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ivig_qa.web.middleware import request_logger

log = request_logger(__name__)

_REMEMBERED = 256  # origins already logged (oldest forgotten first), so a flood cannot fill the log
_MAX_ORIGIN_CHARS = 200
_seen: OrderedDict[str, None] = OrderedDict()


def first_time(origin: str) -> bool:
    """True the first time ``origin`` is refused (since it was last forgotten)."""
    if origin in _seen:
        _seen.move_to_end(origin)
        return False
    _seen[origin] = None
    if len(_seen) > _REMEMBERED:
        _seen.popitem(last=False)
    return True


def _shown(origin: str) -> str:
    return repr(origin[:_MAX_ORIGIN_CHARS])  # repr: a hostile header cannot forge log lines


def same_origin(origin: str, host: str | None) -> bool:
    """A browser's ``Origin`` naming this very server (same host and port) needs no CORS permission."""
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


class RefusedOriginLogMiddleware:
    """One warning per origin that the CORS policy (``allowed``) refuses; the request goes on unchanged.

    A separate middleware next to Starlette's ``CORSMiddleware`` rather than a subclass:
    Gradio looks for that exact class on the parent app to leave CORS to it.
    """

    def __init__(self, app: ASGIApp, *, allowed: list[str]) -> None:
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if (
                origin
                and origin not in self.allowed
                and "*" not in self.allowed
                and not same_origin(origin, headers.get("host"))
                and first_time(origin)
            ):
                log.warning(
                    "refused a cross-origin request from origin %s: it is not in cors_origins "
                    "(add it there to let that site use the assistant)",
                    _shown(origin),
                )
        await self.app(scope, receive, send)


def note_refused_frame(request: Request, allowed: list[str]) -> None:
    """Log when ``/embed`` is loaded into another site's frame that ``frame-ancestors`` will refuse.

    A framed page request carries no ``Origin``; the portal is named when its ``Referer``
    gives it away (portals that send no referrer are logged without a name).
    """
    headers = request.headers
    if headers.get("sec-fetch-dest") != "iframe" or headers.get("sec-fetch-site") in (None, "same-origin"):
        return
    referer = urlsplit(headers.get("referer", ""))
    origin = f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else None
    if origin is not None and (origin in allowed or "*" in allowed):
        return
    if origin is None and allowed:
        return  # an unnamed portal may well be one of the allowed ones
    if first_time(f"frame:{origin}"):
        who = _shown(origin) if origin else "a site that sends no referrer"
        log.warning(
            "/embed was framed by %s, which is not in cors_origins: the browser will refuse to show it",
            who,
        )
