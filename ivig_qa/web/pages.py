"""The HTML pages: the widget script, the embed and demo pages, page scripts, a source shown
in context and its original file (by doc_id only: never a path from the request)."""

# No ``from __future__ import annotations`` here: FastAPI must see the real classes in signatures.

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.web.catalog import Mark, catalog, parse_marks
from ivig_qa.web.cors import note_refused_frame
from ivig_qa.web.lifecycle import ServerState, State
from ivig_qa.web.schemas import SourceView

STATIC_DIR = Path(__file__).with_name("static")
# The page scripts under /static (files, never inline, so pages can keep a strict CSP).
SCRIPTS = frozenset({"chat.js", "source.js"})
SERVED_CONFIG = "/*IVIG_SERVED_CONFIG*/null"  # replaced in widget.js as it is served


def page_routes() -> APIRouter:
    """The widget script, the iframe page, the demo portal, the source-in-context page, page scripts."""
    templates = Jinja2Templates(directory=STATIC_DIR)
    router = APIRouter(include_in_schema=False)

    @router.get("/widget.js", name="widget_js")
    async def widget_js(state: State) -> Response:
        """The widget with its disclaimer, examples, limits and source list built in (no request needed)."""
        script = (STATIC_DIR / "widget.js").read_text("utf-8")
        served = json.dumps(widget_config(state), ensure_ascii=False).replace("</", "<\\/")
        return Response(
            script.replace(SERVED_CONFIG, served, 1),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    @router.get("/static/{name}", name="script")
    async def script(name: str) -> FileResponse:
        if name not in SCRIPTS:
            raise HTTPException(404, "No such file.")
        return FileResponse(
            STATIC_DIR / name, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    @router.get("/embed", name="embed", response_class=HTMLResponse)
    async def embed(request: Request, state: State) -> Response:
        allowed = state.settings.server.cors_origins
        note_refused_frame(request, allowed)
        context = {"title": state.settings.server.app_title}
        return page(templates, request, "embed.html", context, embeddable_by=allowed)

    @router.get("/demo", name="demo", response_class=HTMLResponse)
    async def demo(request: Request, state: State) -> Response:
        return page(templates, request, "demo.html", {"title": state.settings.server.app_title})

    @router.get("/sources/{doc_id}", name="source_page", response_class=HTMLResponse)
    async def source_page(
        request: Request,
        state: State,
        doc_id: str,
        span: Annotated[list[str] | None, Query(max_length=40)] = None,
        start: Annotated[int | None, Query(ge=0)] = None,
        end: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        view = state.source(doc_id)
        marks = parse_marks(span, start, end)
        paragraphs = highlighted(view, marks)
        quote_page = page_at(view, marks[0].start) if marks and view.pages else None
        original = f"../files/{quote(doc_id, safe='')}"  # relative: no URL built from the Host header
        context = {
            "view": view,
            "paragraphs": paragraphs,
            "details": source_details(view.metadata),
            "disclaimer": DISCLAIMER,
            "original": original + (f"#page={quote_page}" if quote_page else ""),
            "quote_page": quote_page,
        }
        return page(templates, request, "source.html", context)

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


def widget_config(state: ServerState) -> dict[str, Any]:
    """What the widget shows before any request: the disclaimer, examples, limits and sources."""
    s = state.settings
    return {
        "disclaimer": DISCLAIMER,
        "examples": s.server.example_questions,
        "max_question_chars": s.policy.max_question_chars,
        "max_history_turns": s.policy.max_history_turns,
        "sources": [info.to_dict() for info in catalog(state.sources)],
    }


@dataclass(frozen=True)
class Piece:
    """A run of a paragraph's text: plain, or highlighted (with its ``[n]`` and an anchor id)."""

    text: str
    marked: bool = False
    n: int | None = None
    anchor: str | None = None


@dataclass(frozen=True)
class Paragraph:
    """One block of a source page, cut into plain and highlighted pieces."""

    heading: str | None
    pieces: list[Piece]
    page: int | None = None
    new_page: bool = False  # the first block shown of its page


def highlighted(view: SourceView, marks: list[Mark]) -> list[Paragraph]:
    """The source's blocks with each mark's ``[start, end)`` span (offsets into its text) highlighted.

    The first highlight is ``#quote`` (where the link lands), later ones ``#quote-2``, ...;
    overlapping marks are clipped so every character is shown once. PDF blocks carry their page.
    """
    paragraphs: list[Paragraph] = []
    heading = ""
    count = 0
    shown_page: int | None = None
    for p in view.passages:
        pieces: list[Piece] = []
        at = 0  # offset within the passage text shown so far
        for mark in marks:
            lo = max(mark.start, p.start + at) - p.start
            hi = min(mark.end, p.end) - p.start
            if lo >= hi:
                continue
            if lo > at:
                pieces.append(Piece(p.text[at:lo]))
            count += 1
            anchor = "quote" if count == 1 else f"quote-{count}"
            pieces.append(Piece(p.text[lo:hi], marked=True, n=mark.n, anchor=anchor))
            at = hi
        if at < len(p.text):
            pieces.append(Piece(p.text[at:]))
        paragraphs.append(
            Paragraph(
                heading=p.heading if p.heading and p.heading != heading else None,
                pieces=pieces,
                page=p.page,
                new_page=p.page is not None and p.page != shown_page,
            )
        )
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
    embeddable_by: list[str] | None = None,
) -> Response:
    """An HTML page with a strict content security policy (scripts only from this origin's files)."""
    ancestors = " ".join(["'self'", *(embeddable_by or [])])
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    response = templates.TemplateResponse(request, name, context)
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
