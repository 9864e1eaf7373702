"""The wiring: one ASGI app with the API, the pages and the chat, and the one way to serve it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.routing import Mount

from ivig_qa import __version__
from ivig_qa.assistant import Assistant
from ivig_qa.settings import Settings
from ivig_qa.web.api import API_KEY_HEADER, PUBLIC_PATHS, api_fallback, api_routes, public_routes
from ivig_qa.web.cors import RefusedOriginLogMiddleware
from ivig_qa.web.errors import (
    body_too_large,
    gradio_refusal,
    headers_too_large,
    install_error_handlers,
    internal_error,
    unauthorized,
)
from ivig_qa.web.lifecycle import ServerState, default_loader, lifespan
from ivig_qa.web.limits import RequestSizeMiddleware, guarded_h11
from ivig_qa.web.metrics import MetricsMiddleware, metrics_routes
from ivig_qa.web.middleware import (
    REQUEST_ID_HEADER,
    ApiKeyMiddleware,
    ChatEvent,
    ChatRoutesGuard,
    CrashGuardMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    inline_script_hashes,
    page_policy,
    request_logger,
)
from ivig_qa.web.pages import page_routes

log = request_logger(__name__)

# Where FastAPI's Swagger UI page loads its script, styles and favicon from.
SWAGGER_ORIGINS = ("https://cdn.jsdelivr.net", "https://fastapi.tiangolo.com")


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

    Around the routes, outermost first: the request id, the crash guard, security headers,
    CORS, the body cap (413 before anything reads a body), then the API key.
    """
    settings = settings or Settings()
    server = settings.server
    state = ServerState.of(settings)
    load = (lambda: assistant) if assistant is not None else (loader or default_loader(settings))
    app = FastAPI(
        title="ivig-qa",
        version=__version__,
        description="Answers questions about IVIG only from curated sources, with citations.",
        lifespan=lifespan(state, load),
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ivig = state
    install_error_handlers(app)
    app.add_middleware(
        ApiKeyMiddleware,
        key=server.api_key,
        header=API_KEY_HEADER,
        prefixes=("/api/", "/metrics"),
        public=PUBLIC_PATHS,
        respond=unauthorized(API_KEY_HEADER),
    )
    app.add_middleware(
        RequestSizeMiddleware,
        max_body_bytes=server.max_body_bytes,
        max_header_bytes=server.max_header_bytes,
        body_too_large=body_too_large(server.max_body_bytes),
        headers_too_large=headers_too_large(server.max_header_bytes),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=server.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", API_KEY_HEADER, REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(
        SecurityHeadersMiddleware,
        frame_ancestors=server.cors_origins,
        eval_pages=["/"] if server.chat_enabled else [],
    )
    app.add_middleware(RefusedOriginLogMiddleware, allowed=settings.server.cors_origins)
    app.add_middleware(CrashGuardMiddleware, respond=internal_error)
    app.add_middleware(RequestIdMiddleware)
    if state.metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=state.metrics)
        app.include_router(metrics_routes())
    app.include_router(public_routes())
    if server.api_docs:
        add_api_docs(app)
    app.include_router(api_routes(settings))
    app.include_router(api_fallback())
    app.include_router(page_routes())
    if server.chat_enabled:
        from ivig_qa.web.chat import build_chat_app, mount_chat  # Gradio loads only when the chat is on

        if server.api_key:
            log.warning("the chat at / is on (chat_ui = true): it answers without the API key")
        chat = build_chat_app(
            lambda: state.assistant,
            settings,
            limiter=state.limiter,
            feedback=state.feedback,
            on_answer=state.answered,
            get_sources=lambda: state.sources,
        )
        mount_chat(app, chat)
        guard_chat(app, chat_events(chat))
    return app


def chat_events(blocks: Any) -> dict[int, ChatEvent]:
    """Each event of the chat's Blocks by its index: its input count, whether it takes event data."""
    import gradio as gr
    from gradio.utils import get_type_hints

    def takes_event_data(fn: Callable[..., Any]) -> bool:
        hints = get_type_hints(fn).values()
        return any(inspect.isclass(h) and issubclass(h, gr.EventData) for h in hints)

    return {i: ChatEvent(len(f.inputs), takes_event_data(f.fn)) for i, f in blocks.fns.items()}


def guard_chat(app: FastAPI, events: dict[int, ChatEvent]) -> None:
    """Put ``ChatRoutesGuard`` in front of the mounted Gradio app (only its page's routes open)."""
    mounts = [r for r in app.router.routes if isinstance(r, Mount) and r.path == ""]
    if len(mounts) != 1:
        raise RuntimeError("the chat is not mounted at / as expected; refusing to serve it unguarded")
    mounts[0].app = ChatRoutesGuard(mounts[0].app, events=events, respond=gradio_refusal)


def add_api_docs(app: FastAPI) -> None:
    """Swagger UI at ``/api/docs`` (``api_docs = true``); its page loads Swagger from a CDN."""

    @app.get("/api/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="openapi.json", title="ivig-qa API")  # relative URL
        hashes = inline_script_hashes(bytes(page.body))
        policy = page_policy(frame_ancestors=[], script_hashes=hashes, also_from=SWAGGER_ORIGINS)
        page.headers["Content-Security-Policy"] = policy
        return page


def uvicorn_config(
    app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """Our logging (with request ids) instead of uvicorn's; the transport's limits; the
    shutdown grace.

    No proxy is trusted unless ``forwarded_allow_ips`` names it (uvicorn would otherwise
    trust X-Forwarded-For from 127.0.0.1); request line and headers are capped at
    ``max_header_bytes``, and each request must arrive within ``read_timeout_s``. On SIGTERM
    uvicorn stops accepting and waits ``shutdown_grace_s`` for requests in flight (SSE
    streams included) before it cancels them.
    """
    server = settings.server
    return uvicorn.Config(
        app,
        host=host or server.host,
        port=server.port if port is None else port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=server.shutdown_grace_s,  # type: ignore[arg-type]
        proxy_headers=bool(server.forwarded_allow_ips),
        forwarded_allow_ips=server.forwarded_allow_ips or "",
        http=guarded_h11(server.read_timeout_s),
        h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_keep_alive=int(max(1, server.keep_alive_s)),
    )


def serve(settings: Settings, *, assistant: Assistant | None = None) -> None:
    """Run the server in the foreground: the one path of ``ivig-qa serve`` and ``python ui.py``."""
    app = create_app(settings, assistant=assistant)
    parts = ["API at /api", *(["chat at /"] if settings.server.chat_enabled else [])]
    parts += ["API docs at /api/docs"] if settings.server.api_docs else []
    log.info("serving on http://%s:%d (%s)", settings.server.host, settings.server.port, ", ".join(parts))
    uvicorn.Server(uvicorn_config(app, settings)).run()
