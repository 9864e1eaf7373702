"""Stage 1: read the corpus folder into ``SourceDocument``s.

Page furniture (share buttons, subscribe boxes, comment sections) is removed by locating
the *content blocks* of the original text rather than by rewriting it, so every offset a
citation carries points into the file exactly as it is on disk.
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
_TERMINAL = (".", "!", "?", '."', ".”", "!”", "?”", ".)", ")")


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


def find_blocks(text: str, spans: list[Span] | None = None) -> list[Block]:
    """Split text into content blocks, dropping furniture and attaching section headings.

    ``spans`` limits the search to given regions (used for HTML, where only the text
    between tags is content).
    """
    line_pats, trailer_pats = _furniture_patterns()
    regions = spans if spans is not None else [Span(0, len(text))]
    lines = [ln for r in regions for ln in _lines(text, r.start, r.end)]
    blocks: list[Block] = []
    heading = ""
    for i, span in enumerate(lines):
        line = text[span.start : span.end]
        bare = line.strip()
        if any(p.search(bare) for p in trailer_pats):
            break
        if any(p.search(bare) for p in line_pats):
            continue
        prev_blank = i == 0 or "\n\n" in text[lines[i - 1].end : span.start] or spans is not None
        next_blank = i + 1 == len(lines) or "\n\n" in text[span.end : lines[i + 1].start] or spans is not None
        if bare.startswith("#") or _is_heading(bare, next_blank, prev_blank):
            heading = _strip_markup_heading(bare)
            continue
        blocks.append(Block(span=span, heading=heading))
    return blocks


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
    blocks = find_blocks(text, html_text_spans(text) if is_html else None)
    if not blocks:
        raise CorpusError(f"{path.name}: empty (no readable content)")
    meta = dict(metadata or {})
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
