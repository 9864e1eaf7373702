"""PDF, Word and web pages in the corpus: extracted text, pages, problems by name, the index.

Every fixture is generated here: a three-page PDF leaflet with a running header and page
numbers (reportlab), a Word file with headings, a list and a table (python-docx), a saved
web page with entities, navigation and a script, and the files an operator should be told
about (a scan without text, an encrypted PDF, damaged files, an empty document, an
unsupported format). The index tests use the real packaged model and a real Chroma index.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import docx
import httpx
import pytest
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.cli import app
from ivig_qa.corpus import load_corpus, validate_sources
from ivig_qa.formats import for_suffix, registry
from ivig_qa.formats.base import collapse
from ivig_qa.settings import Settings
from ivig_qa.testing import BackgroundServer, settings_env
from ivig_qa.types import Answer, SourceDocument, Status
from ivig_qa.web.app import create_app
from ivig_qa.web.chat_render import render_reply

HEADER = "Riverside Clinic · Immunology day unit · patient leaflet IM-07"

# The leaflet, page by page: ("h", heading) or ("p", hard-wrapped lines). The second
# paragraph runs over the page break; "treat-/ment" and "follow-/up" are hyphenated.
LEAFLET = [
    [
        ("h", "Subcutaneous immunoglobulin at home"),
        ("p", [
            "Facilitated subcutaneous immunoglobulin is given under the skin of the tummy with an enzyme",
            "called hyaluronidase, which opens up the tissue so that a larger volume can be absorbed in a",
            "single infusion. Most people need one infusion every three or four weeks, and the whole treat-",
            "ment is usually done at home after a short course of training with a specialist nurse.",
        ]),
        ("p", [
            "The hyaluronidase is infused first, through the same needle, and the immunoglobulin follows",
            "about ten minutes later. The infusion site often looks swollen and feels warm for a day, and",
        ]),
    ],
    [
        ("p", [
            "this swelling is expected: it settles as the fluid is absorbed over the next one to two days.",
        ]),
        ("h", "Side effects and follow-up"),
        ("p", [
            "Redness and itching where the needle went in are common and usually mild. Headache and",
            "tiredness can happen on the day of the infusion. Your nurse will arrange a telephone follow-",
            "up call after your first home infusion.",
        ]),
    ],
    [
        ("h", "When to call the unit"),
        ("p", [
            "Call the immunology unit the same day if the swelling spreads well beyond the infusion site",
            "or if the skin around it becomes hot, hard and painful.",
        ]),
    ],
]  # fmt: skip


def leaflet_pdf(path: Path, pages: list = LEAFLET) -> Path:
    """A text PDF with a running header, "Page N of M" footers, bold headings (deterministic bytes)."""
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    c.setTitle("Subcutaneous immunoglobulin at home")
    for number, page in enumerate(pages, start=1):
        c.setFont("Helvetica", 8)
        c.drawString(72, 810, HEADER)
        c.drawString(270, 30, f"Page {number} of {len(pages)}")
        y = 770.0
        for kind, content in page:
            if kind == "h":
                c.setFont("Helvetica-Bold", 14)
                c.drawString(72, y - 8, content)
                y -= 30
                continue
            c.setFont("Helvetica", 10)
            for line in content:
                c.drawString(72, y, line)
                y -= 14
            y -= 10
        c.showPage()
    c.save()
    return path


def image_only_pdf(path: Path) -> Path:
    """A "scan": two pages of shapes, no text layer."""
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    for _ in range(2):
        c.rect(72, 400, 300, 200, fill=1)
        c.showPage()
    c.save()
    return path


def encrypted_pdf(path: Path, source: Path) -> Path:
    writer = PdfWriter(clone_from=str(source))
    writer.encrypt(user_password="secret", algorithm="AES-128")
    with path.open("wb") as f:
        writer.write(f)
    return path


def pump_docx(path: Path) -> Path:
    """A Word file: a title, headings, a bulleted list, a table and a page header (furniture)."""
    d = docx.Document()
    d.core_properties.title = "Using your infusion pump at home"
    d.sections[0].header.paragraphs[0].text = "Homecare service — confidential"
    d.add_heading("Using your infusion pump at home", 0)
    d.add_heading("Setting up the pump", 1)
    d.add_paragraph(
        "The homecare nurse sets up the infusion pump on the first visit. "
        "Keep the pump charged and store it in its case between infusions."
    )
    d.add_paragraph("Check the expiry date on each vial before you start.", style="List Bullet")
    d.add_paragraph("Let the vials reach room temperature for about an hour.", style="List Bullet")
    d.add_heading("Pump alarms", 1)
    table = d.add_table(rows=3, cols=2)
    for r, (alarm, action) in enumerate(
        [
            ("Alarm", "What to do"),
            ("Occlusion alarm", "Check the tubing for kinks, then restart the pump."),
            ("Low battery alarm", "Plug the pump into its charger."),
        ]
    ):
        table.cell(r, 0).text, table.cell(r, 1).text = alarm, action
    d.save(str(path))
    return path


VISITING_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Visiting the infusion centre | Riverside Clinic</title>
<style>.x { color: red }</style><script>window.tracker = "do not index me";</script></head>
<body>
<header><nav><a href="/">Home</a> <a href="/about">About us</a> <a href="/contact">Contact</a></nav></header>
<main>
<h1>Visiting the infusion centre</h1>
<h2>Parking &amp; transport</h2>
<p>Free parking is available in car park&nbsp;B for patients having an infusion &ndash; ask
reception for a permit when you arrive.</p>
<div class="share">Share This</div>
<h2>Opening hours</h2>
<ul><li>Monday to Friday: 8&nbsp;am to 6&nbsp;pm.</li><li>Saturday: 9&nbsp;am to 1&nbsp;pm.</li></ul>
<!-- an editor's comment, not content -->
</main>
<footer>&copy; 2024 Riverside Clinic &middot; Privacy &middot; Cookies</footer>
<script>console.log("still not content")</script>
</body></html>
"""

SOURCES = """
[ivig-chronic-pain-review]
title = "Immunoglobulin responsive chronic pain"
kind = "journal abstract"

[scig-leaflet]
title = "Subcutaneous immunoglobulin at home"
publisher = "Riverside Clinic"
kind = "leaflet"
url = "https://example.org/leaflets/im-07.pdf"

[pump-guide]
publisher = "Riverside Clinic homecare"
kind = "leaflet"

[visiting]
publisher = "Riverside Clinic"
kind = "patient-education page"
"""

PROBLEM_FILES = ("scan.pdf", "locked.pdf", "damaged.pdf", "damaged.docx", "blank.docx", "notes.rtf")


def add_documents(corpus: Path) -> None:
    leaflet_pdf(corpus / "scig-leaflet.pdf")
    pump_docx(corpus / "pump-guide.docx")
    (corpus / "visiting.html").write_text(VISITING_HTML, "utf-8")


def add_problem_files(corpus: Path, tmp: Path) -> None:
    image_only_pdf(corpus / "scan.pdf")
    encrypted_pdf(corpus / "locked.pdf", leaflet_pdf(tmp / "plain.pdf"))
    (corpus / "damaged.pdf").write_bytes((tmp / "plain.pdf").read_bytes()[:400])
    (corpus / "damaged.docx").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    docx.Document().save(str(corpus / "blank.docx"))
    (corpus / "notes.rtf").write_text(r"{\rtf1 IVIG notes}", "utf-8")


def read(path: Path) -> SourceDocument:
    report = load_corpus(path.parent)
    return next(d for d in report.documents if Path(d.path).name == path.name)


# -- readers -----------------------------------------------------------------------------------------
def test_every_format_is_registered_by_suffix() -> None:
    assert {".txt", ".md", ".html", ".htm", ".pdf", ".docx"} <= set(registry())
    assert for_suffix(".PDF") is for_suffix(".pdf")
    assert for_suffix(".doc") is None


def test_pdf_text_is_paragraphs_without_running_header_or_page_numbers(tmp_path: Path) -> None:
    doc = read(leaflet_pdf(tmp_path / "scig-leaflet.pdf"))
    assert doc.title == "Subcutaneous immunoglobulin at home"
    assert "Riverside Clinic" not in doc.text and "IM-07" not in doc.text
    assert not re.search(r"Page \d", doc.text)
    # hyphenation at line ends undone, a compound's hyphen kept
    assert "the whole treatment is usually done at home" in doc.text
    assert "telephone follow-up call" in doc.text
    # a paragraph over the page break is one block, its text on both pages
    over = "for a day, and this swelling is expected"
    block = next(b for b in doc.blocks if over in doc.text[b.span.start : b.span.end])
    assert doc.page_at(block.span.start) == 1
    assert doc.page_at(doc.text.index("this swelling is expected")) == 2
    assert doc.page_at(doc.text.index("Call the immunology unit")) == 3
    headings = {b.heading for b in doc.blocks}
    assert {
        "Subcutaneous immunoglobulin at home",
        "Side effects and follow-up",
        "When to call the unit",
    } <= headings
    assert next(
        b for b in doc.blocks if "Call the immunology" in doc.text[b.span.start : b.span.end]
    ).heading == ("When to call the unit")
    # every page break of the text is where pypdf's own page text starts
    raw = [collapse(p.extract_text()) for p in PdfReader(doc.path).pages]
    for offset, page in doc.pages:
        assert collapse(doc.text[offset : offset + 30]) in raw[page - 1]


def test_pdf_text_is_the_same_for_the_same_file(tmp_path: Path) -> None:
    one = leaflet_pdf(tmp_path / "a.pdf").read_bytes()
    two = leaflet_pdf(tmp_path / "b.pdf").read_bytes()
    assert one == two
    first, second = for_suffix(".pdf").read(one), for_suffix(".pdf").read(two)
    assert (first.text, first.blocks, first.pages) == (second.text, second.blocks, second.pages)


def test_docx_headings_list_items_and_table_rows(tmp_path: Path) -> None:
    doc = read(pump_docx(tmp_path / "pump-guide.docx"))
    blocks = {doc.text[b.span.start : b.span.end]: b.heading for b in doc.blocks}
    assert doc.title == "Using your infusion pump at home"
    assert blocks["• Check the expiry date on each vial before you start."] == "Setting up the pump"
    assert blocks["Occlusion alarm | Check the tubing for kinks, then restart the pump."] == "Pump alarms"
    assert "Homecare service" not in doc.text  # the page header is not the body
    assert doc.page_at(0) is None


def test_html_is_the_article_text_with_entities_decoded(tmp_path: Path) -> None:
    path = tmp_path / "visiting.html"
    path.write_text(VISITING_HTML, "utf-8")
    doc = read(path)
    assert doc.title == "Visiting the infusion centre | Riverside Clinic"
    text = doc.text
    assert "Free parking is available in car park\u00a0B" not in text  # whitespace normalised
    assert "Free parking is available in car park B for patients having an infusion – ask reception" in text
    for gone in (
        "tracker",
        "About us",
        "Share This",
        "Privacy",
        "editor's comment",
        "still not content",
        "color",
    ):
        assert gone not in text, gone
    assert not re.search(r"<|>|&[a-z]+;|&#\d+;", text)
    parking = next(b for b in doc.blocks if "Free parking" in text[b.span.start : b.span.end])
    assert parking.heading == "Parking & transport"
    assert "• Saturday: 9 am to 1 pm." in text


def test_problems_are_reported_by_name_and_the_rest_still_loads(tmp_path: Path, corpus_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    add_documents(corpus)
    add_problem_files(corpus, tmp_path)
    (corpus / "~$mp-guide.docx").write_bytes(b"lock")
    report = load_corpus(corpus)
    assert sorted(d.doc_id for d in report.documents) == ["pump-guide", "scig-leaflet", "visiting"]
    problems = {p.split(": ", 1)[0]: p for p in report.problems}
    assert set(problems) == set(PROBLEM_FILES)
    assert "OCR is not supported" in problems["scan.pdf"]
    assert "encrypted" in problems["locked.pdf"]
    assert "damaged" in problems["damaged.pdf"] and "damaged" in problems["damaged.docx"]
    assert "empty" in problems["blank.docx"]
    assert "unsupported format (.rtf)" in problems["notes.rtf"]
    assert any(w.startswith("~$mp-guide.docx: an Office lock file") for w in report.warnings)


def test_a_pdf_with_some_pages_scanned_keeps_its_text_pages_and_says_which(tmp_path: Path) -> None:
    text_pdf = PdfReader(str(leaflet_pdf(tmp_path / "text.pdf")))
    writer = PdfWriter()
    writer.add_page(text_pdf.pages[0])
    writer.add_blank_page(width=595, height=842)
    with (tmp_path / "mixed.pdf").open("wb") as f:
        writer.write(f)
    report = load_corpus(tmp_path)
    mixed = next(d for d in report.documents if d.doc_id == "mixed")
    assert "hyaluronidase" in mixed.text
    assert any(w.startswith("mixed.pdf: page 2 has no text layer") for w in report.warnings)


def test_a_pdf_with_only_an_owner_password_is_read(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=str(leaflet_pdf(tmp_path / "plain.pdf")))
    writer.encrypt(user_password="", owner_password="owner-only", algorithm="AES-128")
    with (tmp_path / "restricted.pdf").open("wb") as f:
        writer.write(f)
    assert "hyaluronidase" in read(tmp_path / "restricted.pdf").text


def test_a_saved_page_in_its_own_encoding_is_decoded(tmp_path: Path) -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 \x96 IVIG day unit.</p></body></html>'
    (tmp_path / "cafe.html").write_bytes(page.encode("latin-1"))
    assert read(tmp_path / "cafe.html").text == "Café – IVIG day unit."


def test_sources_kind_is_an_optional_checked_field() -> None:
    checked, warnings = validate_sources(
        {
            "a": {"title": "A", "kind": "leaflet"},
            "b": {"title": "B", "kind": 3, "url": "javascript:alert(1)"},
            "c": {"publisher": "P"},
        }
    )
    assert checked["a"] == {"title": "A", "kind": "leaflet"}
    assert checked["b"] == {"title": "B"}
    assert {w.split(": ")[0] for w in warnings} == {"sources.toml [b] kind", "sources.toml [b] url"}
    assert checked["c"] == {"publisher": "P"}


# -- the index, the answers, the server -----------------------------------------------------------------
@pytest.fixture(scope="module")
def formats_corpus(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Settings:
    """One bundled document, the three new formats and every problem file, indexed by `ivig-qa index`."""
    root = tmp_path_factory.mktemp("formats")
    corpus = root / "corpus"
    corpus.mkdir()
    shutil.copy(corpus_dir / "ivig-chronic-pain-review.txt", corpus)
    (corpus / "sources.toml").write_text(SOURCES, "utf-8")
    add_documents(corpus)
    add_problem_files(corpus, root)
    return Settings.load(
        corpus_dir=corpus, index_dir=root / "index", feedback_db=root / "feedback.sqlite3", chat_ui=False
    )


@pytest.fixture(scope="module")
def index_output(formats_corpus: Settings) -> str:
    result = CliRunner().invoke(app, ["index"], env=settings_env(formats_corpus))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def formats_assistant(formats_corpus: Settings, index_output: str) -> Assistant:
    return Assistant.load(formats_corpus, build=False)


def test_index_summary_names_every_file_not_indexed(index_output: str) -> None:
    for name in PROBLEM_FILES:
        assert re.search(rf"not indexed:\s+{re.escape(name)}", index_output), name
    assert "OCR is not supported" in collapse(index_output)  # the console wraps long lines


def cited(answer: Answer, doc_id: str) -> list:
    return [c for c in answer.citations if c.doc_id == doc_id]


def assert_quotes_verbatim(answer: Answer, docs: dict[str, SourceDocument]) -> None:
    assert answer.status == Status.ANSWERED, answer.reasons
    for c in answer.citations:
        doc = docs[c.doc_id]
        assert doc.text[c.start : c.end] == c.quote
        assert c.page == doc.page_at(c.start)
        assert not re.search(r"<[a-z/!]|&[a-z]+;|&#\d+;", c.quote), c.quote


@pytest.mark.parametrize(
    ("question", "doc_id", "page"),
    [
        ("what is the hyaluronidase for in subcutaneous immunoglobulin?", "scig-leaflet", 1),
        ("will the nurse phone me after my first home infusion?", "scig-leaflet", 2),
        (
            "what kind of swelling at the infusion site is a reason to call the immunology unit?",
            "scig-leaflet",
            3,
        ),
        ("what do I do when the infusion pump gives an occlusion alarm?", "pump-guide", None),
        ("is there free parking at the infusion centre?", "visiting", None),
    ],
)
def test_each_format_answers_with_citations_to_the_right_page(
    formats_assistant: Assistant, formats_corpus: Settings, question: str, doc_id: str, page: int | None
) -> None:
    docs = {d.doc_id: d for d in load_corpus(formats_corpus.index.corpus_dir).documents}
    answer = formats_assistant.ask(question)
    assert_quotes_verbatim(answer, docs)
    mine = cited(answer, doc_id)
    assert mine, [c.doc_id for c in answer.citations]
    if page is None:
        assert all(c.page is None for c in mine)
        return
    assert page in {c.page for c in mine}
    # Independently of our reader: the quote's first words are on that page of the PDF.
    raw = [collapse(p.extract_text()) for p in PdfReader(docs[doc_id].path).pages]
    for c in mine:
        assert " ".join(c.quote.split()[:4]) in raw[c.page - 1], (c.page, c.quote)


def test_server_reports_problems_shows_pages_and_serves_the_original(
    formats_assistant: Assistant, formats_corpus: Settings
) -> None:
    answer = formats_assistant.ask("will the nurse phone me after my first home infusion?")
    c = next(c for c in answer.citations if c.doc_id == "scig-leaflet")
    shown = render_reply(answer.status, answer.answer, answer.citations, lambda _doc_id: None)
    assert f"\\[{c.n}\\] (page {c.page})" in shown
    with BackgroundServer(create_app(formats_corpus, assistant=formats_assistant)) as url:
        health = httpx.get(f"{url}/api/health", timeout=30).json()
        assert {p.split(": ", 1)[0] for p in health["problems"]} == set(PROBLEM_FILES)
        page = httpx.get(f"{url}/sources/scig-leaflet", params={"start": c.start, "end": c.end}, timeout=30)
        assert page.status_code == 200
        assert f"page {c.page}" in page.text and f"/files/scig-leaflet#page={c.page}" in page.text
        assert f'<mark id="quote">{c.quote}</mark>' in page.text
        pdf = httpx.get(f"{url}/files/scig-leaflet", timeout=30)
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content == (formats_corpus.index.corpus_dir / "scig-leaflet.pdf").read_bytes()
        html = httpx.get(f"{url}/files/visiting", timeout=30)
        assert html.headers["content-security-policy"].startswith("sandbox")
        word = httpx.get(f"{url}/files/pump-guide", timeout=30)
        assert word.headers["content-disposition"].startswith("attachment")
        for bad in ("scan", "..%2Fcorpus%2Fsources", "sources.toml", "no-such-doc"):
            assert httpx.get(f"{url}/files/{bad}", timeout=30).status_code == 404, bad


def test_scope_follows_the_corpus_added_changed_and_removed_pdf(tmp_path: Path, corpus_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(corpus_dir / "ivig-chronic-pain-review.txt", corpus)
    settings = Settings.load(corpus_dir=corpus, index_dir=tmp_path / "index")
    env = settings_env(settings)
    question = "what is the hyaluronidase for in subcutaneous immunoglobulin?"

    def index() -> str:
        result = CliRunner().invoke(app, ["index"], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    index()
    before = Assistant.load(settings, build=False).ask(question)
    assert before.status == Status.NOT_IN_SOURCES
    assert any(r.id == "scope.unknown_terms" and "hyaluronidase" in r.detail for r in before.reasons)

    leaflet_pdf(corpus / "scig-leaflet.pdf")
    assert re.search(r"embedded\s+│?\s*scig-leaflet\s", index())
    added = Assistant.load(settings, build=False).ask(question)
    assert added.status == Status.ANSWERED and cited(added, "scig-leaflet")

    changed = [
        [*LEAFLET[0], ("p", ["A changed leaflet is embedded again, and only that leaflet."])],
        *LEAFLET[1:],
    ]
    leaflet_pdf(corpus / "scig-leaflet.pdf", changed)
    out = index()
    assert re.search(r"embedded\s+│?\s*scig-leaflet\s", out) and re.search(r"reused\s+│?\s*1\s", out)

    (corpus / "scig-leaflet.pdf").unlink()
    assert re.search(r"removed\s+│?\s*scig-leaflet\s", index())
    after = Assistant.load(settings, build=False).ask(question)
    assert not cited(after, "scig-leaflet")
    assert after.status == Status.NOT_IN_SOURCES


def test_the_index_summary_table_lists_not_indexed_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "visiting.html").write_text(VISITING_HTML, "utf-8")
    image_only_pdf(corpus / "scan.pdf")
    settings = Settings.load(corpus_dir=corpus, index_dir=tmp_path / "index")
    result = CliRunner().invoke(app, ["index"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert re.search(r"not indexed\s+│?\s*scan\.pdf", result.output)
    assert result.output.count("scan.pdf") >= 2  # the line above the table, and the row
