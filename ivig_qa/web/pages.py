"""The HTML pages: the widget script, the embed and demo pages, a source shown in context and
its original file (by doc_id only: never a path from the request)."""

# No ``from __future__ import annotations`` here: FastAPI must see the real classes in signatures.

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.web.lifecycle import State
from ivig_qa.web.schemas import SourceView

STATIC_DIR = Path(__file__).with_name("static")


def page_routes() -> APIRouter:
    """The widget script, the iframe page, the demo portal and the source-in-context page."""
    templates = Jinja2Templates(directory=STATIC_DIR)
    router = APIRouter(include_in_schema=False)

    @router.get("/widget.js", name="widget_js")
    async def widget_js() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "widget.js",
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    @router.get("/embed", name="embed", response_class=HTMLResponse)
    async def embed(request: Request, state: State) -> Response:
        context = {"title": state.settings.server.app_title}
        return page(
            templates, request, "embed.html", context, embeddable_by=state.settings.server.cors_origins
        )

    @router.get("/demo", name="demo", response_class=HTMLResponse)
    async def demo(request: Request, state: State) -> Response:
        return page(templates, request, "demo.html", {"title": state.settings.server.app_title})

    @router.get("/sources/{doc_id}", name="source_page", response_class=HTMLResponse)
    async def source_page(
        request: Request,
        state: State,
        doc_id: str,
        start: Annotated[int | None, Query(ge=0)] = None,
        end: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        view = state.source(doc_id)
        paragraphs = highlighted(view, start, end)
        quote_page = page_at(view, start) if any(p.anchor for p in paragraphs) else None
        original = str(request.url_for("source_file", doc_id=doc_id))
        context = {
            "view": view,
            "paragraphs": paragraphs,
            "details": source_details(view.metadata),
            "disclaimer": DISCLAIMER,
            "original": original + (f"#page={quote_page}" if quote_page else ""),
            "quote_page": quote_page,
        }
        return page(templates, request, "source.html", context, scripts=False)

    @router.get("/files/{doc_id}", name="source_file")
    async def source_file(state: State, doc_id: str) -> FileResponse:
        """The corpus file behind a source, as the operator dropped it in the folder."""
        view = state.source(doc_id)
        corpus = state.settings.index.corpus_dir.resolve()
        path = (corpus / view.file_name).resolve()
        if path.parent != corpus or not path.is_file():
            raise HTTPException(404, f"The original file of {doc_id!r} is no longer in the corpus.")
        return FileResponse(
            path,
            media_type=view.media_type,
            filename=view.file_name,
            content_disposition_type="inline" if viewable(view.media_type) else "attachment",
            headers=file_headers(view.media_type),
        )

    return router


def page_at(view: SourceView, offset: int | None) -> int | None:
    """The PDF page the character at ``offset`` is on (None without pages)."""
    before = [n for o, n in view.pages if o <= (offset or 0)]
    return before[-1] if before else (view.pages[0][1] if view.pages else None)


def viewable(media_type: str) -> bool:
    """Browsers show these in the tab; others (Word files) are downloaded."""
    return media_type.startswith(("application/pdf", "text/"))


def file_headers(media_type: str) -> dict[str, str]:
    """A saved web page may carry scripts: it is served sandboxed (no scripts, no same origin)."""
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    if media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        )
    return headers


@dataclass(frozen=True)
class Paragraph:
    """One block of a source page, split around the highlighted citation span."""

    heading: str | None
    before: str
    mark: str
    after: str
    anchor: bool
    page: int | None = None
    new_page: bool = False  # the first block shown of its page


def highlighted(view: SourceView, start: int | None, end: int | None) -> list[Paragraph]:
    """The source's blocks with the ``[start, end)`` span (offsets into its text) marked."""
    paragraphs: list[Paragraph] = []
    heading = ""
    anchored = False
    shown_page: int | None = None
    for p in view.passages:
        lo = max(start or 0, p.start) - p.start
        hi = min(end or 0, p.end) - p.start
        marked = start is not None and end is not None and lo < hi
        if not marked:
            lo = hi = len(p.text)
        paragraphs.append(
            Paragraph(
                heading=p.heading if p.heading and p.heading != heading else None,
                before=p.text[:lo],
                mark=p.text[lo:hi],
                after=p.text[hi:],
                anchor=marked and not anchored,
                page=p.page,
                new_page=p.page is not None and p.page != shown_page,
            )
        )
        anchored = anchored or marked
        heading = p.heading
        shown_page = p.page
    return paragraphs


def source_details(metadata: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, text, link) rows for the source page; only http(s) URLs become links."""
    rows: list[tuple[str, str, str | None]] = []
    for key in ("publisher", "kind", "doi", "url"):
        value = metadata.get(key)
        if value:
            text = str(value)
            link = text if key == "url" and re.match(r"^https?://", text) else None
            rows.append((key.capitalize() if key != "doi" else "DOI", text, link))
    return rows


def page(
    templates: Jinja2Templates,
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    scripts: bool = True,
    embeddable_by: list[str] | None = None,
) -> Response:
    """An HTML page with a strict content security policy (no inline or third-party scripts)."""
    ancestors = " ".join(["'self'", *(embeddable_by or [])])
    script_src = "'self'" if scripts else "'none'"
    csp = (
        f"default-src 'self'; script-src {script_src}; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    response = templates.TemplateResponse(request, name, context)
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
