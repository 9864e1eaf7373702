"""The wiring: one ASGI app with the API, the pages and the chat, and the one way to serve it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ivig_qa import __version__
from ivig_qa.assistant import Assistant
from ivig_qa.settings import Settings
from ivig_qa.web.api import API_KEY_HEADER, api_fallback, api_routes, public_routes
from ivig_qa.web.cors import RefusedOriginLogMiddleware
from ivig_qa.web.errors import install_error_handlers, internal_error
from ivig_qa.web.lifecycle import ServerState, default_loader, lifespan
from ivig_qa.web.middleware import (
    REQUEST_ID_HEADER,
    CrashGuardMiddleware,
    RequestIdMiddleware,
    request_logger,
)
from ivig_qa.web.pages import page_routes

log = request_logger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    assistant: Assistant | None = None,
    loader: Callable[[], Assistant] | None = None,
) -> FastAPI:
    """The whole server as one ASGI app: the API under ``/api``, the pages, the chat at ``/``.

    One process serves everything, so a portal needs one origin for the widget, the iframe
    page and the API; the chat and the API share one rate limiter and one feedback store.
    Pass ``assistant`` to serve an already open index; otherwise ``loader`` (default: open
    or build the index from ``settings``) runs in the background at start-up: until it is
    ready ``/api/health`` answers 503 and questions are refused with 503 + ``Retry-After``,
    while the process already accepts connections for probes.
    """
    settings = settings or Settings()
    state = ServerState.of(settings)
    load = (lambda: assistant) if assistant is not None else (loader or default_loader(settings))
    app = FastAPI(
        title="ivig-qa",
        version=__version__,
        description="Answers questions about IVIG only from curated sources, with citations.",
        lifespan=lifespan(state, load),
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ivig = state
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.server.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", API_KEY_HEADER, REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(RefusedOriginLogMiddleware, allowed=settings.server.cors_origins)
    app.add_middleware(CrashGuardMiddleware, respond=internal_error)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(public_routes())
    app.include_router(api_routes(settings))
    app.include_router(api_fallback())
    app.include_router(page_routes())
    if settings.server.chat_ui:
        from ivig_qa.web.chat import build_chat_app, mount_chat  # Gradio loads only when the chat is on

        chat = build_chat_app(
            lambda: state.assistant,
            settings,
            limiter=state.limiter,
            feedback=state.feedback,
            get_sources=lambda: state.sources,
        )
        mount_chat(app, chat)
    return app


def uvicorn_config(
    app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """Our logging (with request ids) instead of uvicorn's, and proxy headers as configured."""
    extra: dict[str, Any] = {}
    if settings.server.forwarded_allow_ips:
        extra["forwarded_allow_ips"] = settings.server.forwarded_allow_ips
    return uvicorn.Config(
        app,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **extra,
    )


def serve(settings: Settings, *, assistant: Assistant | None = None) -> None:
    """Run the server in the foreground: the one path of ``ivig-qa serve`` and ``python ui.py``."""
    app = create_app(settings, assistant=assistant)
    log.info(
        "serving on http://%s:%d (chat at /, API docs at /api/docs)",
        settings.server.host,
        settings.server.port,
    )
    uvicorn.Server(uvicorn_config(app, settings)).run()
