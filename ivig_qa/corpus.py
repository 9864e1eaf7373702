"""Stage 1: read the corpus folder into ``SourceDocument``s.

Page furniture (share buttons, subscribe boxes, comment sections) is removed by locating
the *content blocks* of the original text rather than by rewriting it, so every offset a
citation carries points into the file exactly as it is on disk.

Every line is one of: furniture (dropped), a heading (the section of the blocks after it), a
label (a title-like line standing alone, such as a reference line, a byline or the title of a
linked article, or a line naming the document's own source: context, never content) or content.
Only content becomes ``Block``s, so headings and labels are never quoted as statements.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ivig_qa import data
from ivig_qa.types import Block, SourceDocument, Span

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm")
SOURCES_FILE = "sources.toml"
MAX_HEADING_CHARS = 120
MAX_LABEL_CHARS = 200
# A line ending like this is a sentence; "Chronic Fatigue Syndrome (ME/CFS)" is not.
_TERMINAL = (".", "!", "?", '."', ".”", "!”", "?”", ".)")
# Share of capitalised words above which a standalone line reads as a title, not prose.
TITLE_CASE_SHARE = 0.6
_TITLE_WORD = re.compile(r"[^\W\d_][\w'’-]*")


class CorpusError(Exception):
    """A corpus problem worth telling the operator about (names the file)."""


@dataclass
class CorpusReport:
    """What loading found: the documents, plus files that were skipped and why."""

    documents: list[SourceDocument]
    problems: list[str]
    warnings: list[str]


@cache
def _furniture_patterns() -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    rules = data.load("furniture.toml")
    compile_all = lambda pats: [re.compile(p, re.IGNORECASE) for p in pats]  # noqa: E731
    return compile_all(rules["line_patterns"]), compile_all(rules["trailer_patterns"])


def _lines(text: str, start: int = 0, end: int | None = None) -> Iterator[Span]:
    """Spans of non-blank lines, trimmed of surrounding whitespace."""
    end = len(text) if end is None else end
    for m in re.finditer(r"[^\n]+", text[start:end]):
        raw = m.group()
        left = len(raw) - len(raw.lstrip())
        right = len(raw.rstrip())
        if right > left:
            yield Span(start + m.start() + left, start + m.start() + right)


def _is_heading(line: str, next_is_blank: bool, prev_is_blank: bool) -> bool:
    """Short line with no sentence ending, standing alone or ending in ':'."""
    if len(line) > MAX_HEADING_CHARS:
        return False
    if line.endswith(":"):
        return True
    if line.endswith(_TERMINAL) or line.lstrip().startswith(("•", "-", "*", "·")):
        return False
    return next_is_blank and prev_is_blank


def _strip_markup_heading(line: str) -> str:
    return line.lstrip("#").strip().rstrip(":").strip()


def reads_as_title(line: str) -> bool:
    """Most words capitalised: a title, reference line or byline ("J Clin Immunol. 2010 May…").

    Prose capitalises its first word and names; a title or a reference capitalises nearly all.
    """
    words = _TITLE_WORD.findall(line)
    return len(words) >= 3 and sum(w[0].isupper() for w in words) / len(words) >= TITLE_CASE_SHARE


def _source_names(metadata: dict | None) -> list[str]:
    """The name the metadata gives the document's publisher, without its aside ("The Lupus
    Encyclopedia (Donald Thomas, MD), draft…" → "The Lupus Encyclopedia"); two words at least."""
    publisher = str((metadata or {}).get("publisher") or "")
    name = re.split(r"\s*[(,]", publisher, maxsplit=1)[0].strip()
    return [name] if len(name.split()) >= 2 else []


def classify_lines(
    text: str, spans: list[Span] | None = None, metadata: dict | None = None
) -> Iterator[tuple[Span, str]]:
    """Each line's kind, in order: ``heading``, ``label`` or ``content`` (furniture is skipped,
    and a trailer ends the document).

    A label is a standalone line that reads as a title, or a short standalone paragraph that
    names the document's own source (from ``metadata``, e.g. "The above is an excerpt from
    “The Lupus Encyclopedia”…"): it is about the document, not its subject.
    """
    line_pats, trailer_pats = _furniture_patterns()
    regions = spans if spans is not None else [Span(0, len(text))]
    lines = [ln for r in regions for ln in _lines(text, r.start, r.end)]
    names = _source_names(metadata)
    for i, span in enumerate(lines):
        line = text[span.start : span.end]
        bare = line.strip()
        if any(p.search(bare) for p in trailer_pats):
            return
        if any(p.search(bare) for p in line_pats):
            continue
        prev_blank = i == 0 or "\n\n" in text[lines[i - 1].end : span.start] or spans is not None
        next_blank = i + 1 == len(lines) or "\n\n" in text[span.end : lines[i + 1].start] or spans is not None
        if bare.startswith("#") or _is_heading(bare, next_blank, prev_blank):
            yield span, "heading"
        elif (
            prev_blank
            and next_blank
            and len(bare) <= MAX_LABEL_CHARS
            and (reads_as_title(bare) or any(name in bare for name in names))
        ):
            yield span, "label"
        else:
            yield span, "content"


def find_blocks(text: str, spans: list[Span] | None = None, metadata: dict | None = None) -> list[Block]:
    """Split text into content blocks, dropping furniture and labels and attaching section headings.

    ``spans`` limits the search to given regions (used for HTML, where only the text
    between tags is content); ``metadata`` names the document's source (see ``classify_lines``).
    """
    blocks: list[Block] = []
    heading = ""
    for span, kind in classify_lines(text, spans, metadata):
        if kind == "heading":
            heading = _strip_markup_heading(text[span.start : span.end].strip())
        elif kind == "content":
            blocks.append(Block(span=span, heading=heading))
    return blocks


def context_spans(doc: SourceDocument) -> list[Span]:
    """Where a document's headings and labels are: context for its quotes, never a quote."""
    is_html = Path(doc.path).suffix.lower() in (".html", ".htm")
    spans = html_text_spans(doc.text) if is_html else None
    return [span for span, kind in classify_lines(doc.text, spans, doc.metadata) if kind != "content"]


_HTML_SKIP = re.compile(r"<(script|style|noscript|template|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>|<!--.*?-->", re.DOTALL)


def html_text_spans(raw: str) -> list[Span]:
    """Spans of visible text between tags (raw, so offsets stay valid in the file)."""
    hidden = [m.span() for m in _HTML_SKIP.finditer(raw)]
    spans: list[Span] = []
    pos = 0
    for m in _HTML_TAG.finditer(raw):
        if m.start() > pos and not any(a <= pos < b for a, b in hidden):
            spans.append(Span(pos, m.start()))
        pos = m.end()
    if pos < len(raw):
        spans.append(Span(pos, len(raw)))
    return [s for s in spans if raw[s.start : s.end].strip()]


def _html_title(raw: str) -> str | None:
    m = re.search(r"<title[^>]*>(.*?)</title>", raw, re.IGNORECASE | re.DOTALL)
    return html.unescape(m.group(1)).strip() if m else None


def read_sources(corpus_dir: Path) -> dict[str, dict]:
    """The metadata table; a broken sources.toml is a clear error, not a traceback."""
    path = corpus_dir / SOURCES_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot parse metadata ({exc})") from exc


def _title_from_stem(stem: str) -> str:
    return re.sub(r"[-_]+", " ", stem).strip().capitalize()


def load_document(path: Path, metadata: dict | None) -> SourceDocument:
    """Read one file; raise ``CorpusError`` naming the file when it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path.name}: unreadable ({exc.strerror or exc})") from exc
    if b"\x00" in data[:4096]:
        raise CorpusError(f"{path.name}: looks binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    is_html = path.suffix.lower() in (".html", ".htm")
    meta = dict(metadata or {})
    blocks = find_blocks(text, html_text_spans(text) if is_html else None, meta)
    if not blocks:
        raise CorpusError(f"{path.name}: empty (no readable content)")
    title = meta.get("title") or (_html_title(text) if is_html else None) or _title_from_stem(path.stem)
    meta.setdefault("title", title)
    return SourceDocument(
        doc_id=path.stem,
        path=str(path),
        text=text,
        title=title,
        metadata=meta,
        blocks=blocks,
        content_hash=hashlib.sha256(data).hexdigest(),
    )


def load_corpus(corpus_dir: Path) -> CorpusReport:
    """Load every supported file; problems are collected per file instead of aborting."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus folder not found: {corpus_dir}")
    sources = read_sources(corpus_dir)
    documents, problems, warnings = [], [], []
    for path in sorted(corpus_dir.iterdir()):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES or not path.is_file():
            continue
        meta = sources.get(path.stem)
        if meta is None:
            warnings.append(f"{path.name}: not listed in {SOURCES_FILE}; title taken from the file name")
        try:
            documents.append(load_document(path, meta))
        except CorpusError as exc:
            problems.append(str(exc))
    for problem in problems:
        log.warning("skipped %s", problem)
    for warning in warnings:
        log.warning("%s", warning)
    return CorpusReport(documents=documents, problems=problems, warnings=warnings)
