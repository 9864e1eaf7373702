"""What the chat, the widget and the source pages are built from, without a browser.

The sources list (each source named once, its kind and publisher, one link per source),
the source page's highlights, the conversation the browser keeps and gives back, the
widget script with its disclaimer built in, and the server log naming a refused origin.
Real corpus files and source views; no index or model is needed here.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ivig_qa.feedback import FeedbackStore
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Citation, Status
from ivig_qa.web.app import create_app
from ivig_qa.web.catalog import Mark, catalog, parse_marks, source_info, source_path
from ivig_qa.web.chat_render import landing_markdown, render_reply, sources_markdown
from ivig_qa.web.lifecycle import load_sources
from ivig_qa.web.pages import SERVED_CONFIG, highlighted
from ivig_qa.web.schemas import SourceView

PORTAL = "https://portal.example.org"


@pytest.fixture(scope="module")
def settings(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    where = tmp_path_factory.mktemp("web-ui")
    return Settings.load(
        corpus_dir=corpus_dir,
        index_dir=where / "index",
        feedback_db=where / "feedback.sqlite3",
        cors_origins=[PORTAL],
        chat_ui=False,
    )


@pytest.fixture(scope="module")
def sources(settings: Settings) -> dict[str, SourceView]:
    return load_sources(settings)


def cite(view: SourceView, n: int, passage: int = 0) -> Citation:
    """A citation of a real passage's first sentence-ish span (offsets into the original file)."""
    p = view.passages[passage]
    end = p.start + min(len(p.text), 60)
    return Citation(
        n=n,
        doc_id=view.doc_id,
        title=view.title,
        chunk_id=f"{view.doc_id}:0",
        text=p.text,
        quote=p.text[: end - p.start],
        start=p.start,
        end=end,
        score=1.0,
    )


# --- the sources list -------------------------------------------------------------------------------
def test_sources_list_names_each_source_once_with_kind_and_publisher(sources: dict[str, SourceView]) -> None:
    lupus, spasms = sources["ivig-lupus"], sources["ivig-infantile-spasms"]
    citations = [cite(lupus, 1, 0), cite(spasms, 2, 0), cite(lupus, 3, 1)]
    md = sources_markdown(citations, lambda d: sources[d].metadata)
    entries = [line for line in md.splitlines() if line.startswith("- ")]
    assert len(entries) == 2  # one per source, in the order of their first [n]
    assert entries[0].startswith("- \\[1\\] \\[3\\] [Read “") and "ivig-lupus?span=1:" in entries[0]
    assert "&span=3:" in entries[0] and "ivig-infantile-spasms?span=2:" in entries[1]
    shown = md.replace("\\", "")  # Markdown escapes dropped, as the reader sees it
    assert "Patient-education book excerpt · The Lupus Encyclopedia (Donald Thomas, MD)" in shown
    assert lupus.metadata["kind"] == "patient-education book excerpt"
    for c in citations:
        assert c.quote not in md  # the quotes are in the answer, not repeated here


def test_citation_fields_win_over_metadata_and_unknown_sources_still_get_a_title() -> None:
    class WithKind:
        title, kind, publisher = "T", "podcast", "Someone"

    info = source_info("doc", {"title": "Served title", "kind": "article"}, WithKind())
    assert (info.title, info.kind, info.publisher) == ("Served title", "podcast", "Someone")
    assert source_info("doc", None, WithKind()).title == "T"
    assert source_info("gone", None).title == "gone" and source_info("gone", None).described == ""


def test_urgent_reply_starts_with_the_alert_and_html_stays_text(sources: dict[str, SourceView]) -> None:
    citations = [cite(sources["ivig-lupus"], 1)]
    md = render_reply(Status.URGENT_CARE, "Act now <b>x</b> [1]", citations, lambda d: sources[d].metadata)
    assert md.startswith('<div class="ivig-urgent" role="alert">')
    assert "&lt;b&gt;" in md and "<b>" not in md


def test_landing_view_lists_every_source(sources: dict[str, SourceView]) -> None:
    md = landing_markdown(catalog(sources))
    assert all(view.title.split(" (")[0] in md.replace("\\", "") for view in sources.values())
    assert landing_markdown([]).startswith("**Ask a question")


# --- the source page ---------------------------------------------------------------------------------
def test_source_links_round_trip_and_bad_marks_are_skipped(sources: dict[str, SourceView]) -> None:
    view = sources["ivig-lupus"]
    a, b = cite(view, 1, 0), cite(view, 2, 1)
    path = source_path(view.doc_id, [a, b])
    values = [part.split("=", 1)[1] for part in path.split("?")[1].split("#")[0].split("&")]
    assert parse_marks(values) == [Mark(a.start, a.end, 1), Mark(b.start, b.end, 2)]
    assert parse_marks(["9-3", "x", "1:2-", "12:5-9"], start=0, end=4) == [Mark(0, 4), Mark(5, 9, 12)]


def test_source_page_highlights_every_mark_once(sources: dict[str, SourceView]) -> None:
    view = sources["ivig-infantile-spasms"]
    p0, p1 = view.passages[0], view.passages[1]
    marks = [
        Mark(p0.start + 2, p0.start + 20, 1),
        Mark(p0.start + 10, p0.start + 30, 2),
        Mark(p1.start, p1.end, 3),
    ]
    paragraphs = highlighted(view, marks)
    # The text is shown exactly once, whatever is highlighted (overlaps are clipped).
    for para, passage in zip(paragraphs, view.passages, strict=True):
        assert "".join(piece.text for piece in para.pieces) == passage.text
    marked = [piece for para in paragraphs for piece in para.pieces if piece.marked]
    assert [m.anchor for m in marked] == ["quote", "quote-2", "quote-3"]
    assert [m.n for m in marked] == [1, 2, 3]
    assert marked[0].text == p0.text[2:20] and marked[1].text == p0.text[20:30]


# --- the conversation the browser keeps -----------------------------------------------------------------
class NoLimit:
    def take(self, client: str) -> float:
        return 0.0


def test_a_kept_conversation_is_validated_and_rendered_again(
    settings: Settings, sources: dict[str, SourceView]
) -> None:
    pytest.importorskip("gradio")
    from ivig_qa.web.chat import ChatHandlers, ChatSession, Conversation, Turn

    handlers = ChatHandlers(
        get_assistant=lambda: None,
        get_sources=lambda: sources,
        settings=settings,
        limiter=NoLimit(),
        feedback=FeedbackStore(settings.server.feedback_db),
    )
    c = cite(sources["ivig-lupus"], 1)
    turn = Turn(
        question="<b>hi</b>?",
        status=Status.ANSWERED,
        answer="A [1]",
        answer_id="abc",
        citations=[c.model_dump()],
    )
    saved = Conversation(turns=[turn]).model_dump_json()
    _, session, holder = handlers.restore(saved, ChatSession())
    assert [t.question for t in session.turns] == ["<b>hi</b>?"]
    assert session.shown[0]["content"] == "&lt;b&gt;hi&lt;/b&gt;?"  # shown as text
    assert "Read “" in session.shown[1]["content"] and session.answer_ids == {1: "abc"}
    assert [m.role for m in session.history()] == ["user", "assistant"]
    kept = html.unescape(holder.split('data-conversation="')[1].split('"')[0])  # what chat.js stores
    assert Conversation.model_validate_json(kept).turns[0].answer_id == "abc"
    # Tampered or oversized data is refused; a session that already has turns is left alone.
    bad = json.dumps({"turns": [{**json.loads(turn.model_dump_json()), "status": "made_up"}]})
    assert handlers.restore(bad, ChatSession())[1].turns == []
    assert handlers.restore(saved, session)[1] is session and len(session.turns) == 1


# --- the widget script and the CORS log ---------------------------------------------------------------
@pytest.fixture
def client(settings: Settings, sources: dict[str, SourceView]):
    app = create_app(settings, loader=lambda: None)  # the lifespan (and so loading) does not run here
    app.state.ivig.sources = sources
    return TestClient(app)


def test_widget_js_has_the_disclaimer_and_the_sources_built_in(client: TestClient) -> None:
    r = client.get("/widget.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert SERVED_CONFIG not in r.text and json.dumps(DISCLAIMER, ensure_ascii=False) in r.text
    assert "IVIG for Infantile Spasms" in r.text and "patient-education page" in r.text
    assert client.get("/static/chat.js").status_code == 200
    assert client.get("/static/source.js").status_code == 200
    assert client.get("/static/demo.html").status_code == 404  # templates are not served raw


def test_a_refused_origin_is_logged_once_by_origin_only(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ivig_qa.web.cors")
    evil = "https://unlisted-portal.example.net"
    for _ in range(2):
        r = client.get("/api/config?secret=1", headers={"Origin": evil})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    client.get("/api/config", headers={"Origin": PORTAL})  # allowed
    client.get("/api/config", headers={"Origin": "http://testserver"})  # this server itself
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and repr(evil) in lines[0] and "cors_origins" in lines[0]
    assert "secret" not in lines[0] and "/api/config" not in lines[0]


def test_embed_framed_by_an_unlisted_portal_is_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ivig_qa.web.cors")
    framed = {"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "cross-site"}
    r = client.get("/embed", headers={**framed, "Referer": "https://other-clinic.example.com/patients?id=7"})
    assert r.status_code == 200 and f"frame-ancestors 'self' {PORTAL}" in r.headers["content-security-policy"]
    client.get("/embed", headers={**framed, "Referer": f"{PORTAL}/learn"})  # allowed: not logged
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'https://other-clinic.example.com'" in lines[0] and "id=7" not in lines[0]
