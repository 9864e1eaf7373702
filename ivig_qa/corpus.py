"""Stage 1: read the corpus folder into ``SourceDocument``s.

Each file is read by the format its suffix names (``ivig_qa.formats``: .txt/.md as they
are on disk, .html/.htm, .pdf, .docx as the text their reader extracts); ``sources.toml``
adds each document's title, publisher, url and kind. Nothing is skipped silently: a file
that cannot be used (unsupported, damaged, encrypted, a scan without text, empty) is a
*problem* named in the report, and the rest of the corpus loads anyway.

A block that is a *label* — a title-like paragraph standing alone (a reference line, a byline,
the title of a linked article) or one naming the document's own source — is context, not
content: it is left out of the blocks, so headings and labels are never quoted as statements.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ivig_qa import formats
from ivig_qa.types import Block, SourceDocument, Span

log = logging.getLogger(__name__)

SOURCES_FILE = "sources.toml"
MAX_LABEL_CHARS = 200
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


class SourceMetadata(BaseModel):
    """One table of ``sources.toml``: what citations show about a document (all optional)."""

    model_config = ConfigDict(extra="allow")

    title: str | None = Field(None, min_length=1, max_length=300)
    publisher: str | None = Field(None, min_length=1, max_length=300)
    url: str | None = Field(None, pattern=r"^https?://\S+$", description="An http(s) address.")
    kind: str | None = Field(
        None,
        min_length=1,
        max_length=60,
        description="The kind of source, shown next to citations: leaflet, clinical reference, "
        "patient-community article, journal abstract…",
    )
    doi: str | None = Field(None, min_length=1, max_length=200)
    topics: list[str] | None = None


def read_sources(corpus_dir: Path) -> dict[str, dict]:
    """The metadata table as written; a broken sources.toml is a clear error, not a traceback."""
    path = corpus_dir / SOURCES_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot parse metadata ({exc})") from exc


def validate_sources(raw: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each document's checked metadata, and a warning per field that was wrong (and left out)."""
    checked: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for doc_id, table in raw.items():
        if not isinstance(table, dict):
            warnings.append(f"{SOURCES_FILE}: {doc_id!r} is not a table ([{doc_id}] …); ignored")
            continue
        table = dict(table)
        try:
            meta = SourceMetadata.model_validate(table)
        except ValidationError as exc:
            for key in dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"]):
                msg = next(e["msg"] for e in exc.errors() if e["loc"] and str(e["loc"][0]) == key)
                warnings.append(f"{SOURCES_FILE} [{doc_id}] {key}: {msg}; ignored")
                table.pop(key, None)
            meta = SourceMetadata.model_validate(table)
        checked[doc_id] = meta.model_dump(exclude_unset=True)
    return checked, warnings


def _title_from_stem(stem: str) -> str:
    return re.sub(r"[-_]+", " ", stem).strip().capitalize()


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


def _stands_alone(text: str, span: Span) -> bool:
    before, after = text[: span.start], text[span.end :]
    return (not before.strip() or before.rstrip(" \t").endswith("\n\n")) and (
        not after.strip() or after.lstrip(" \t").startswith("\n\n")
    )


def is_label(text: str, block: Block, metadata: dict | None) -> bool:
    """A short standalone paragraph that reads as a title or names the document's own source."""
    bare = text[block.span.start : block.span.end].strip()
    if len(bare) > MAX_LABEL_CHARS or not _stands_alone(text, block.span):
        return False
    return reads_as_title(bare) or any(name in bare for name in _source_names(metadata))


def context_spans(doc: SourceDocument) -> list[Span]:
    """Where a document's non-content text is (headings, labels, furniture): never a quote."""
    spans: list[Span] = []
    pos = 0
    for block in [*doc.blocks, None]:
        end = block.span.start if block else len(doc.text)
        gap = doc.text[pos:end]
        if gap.strip():
            left = len(gap) - len(gap.lstrip())
            spans.append(Span(pos + left, pos + len(gap.rstrip())))
        pos = block.span.end if block else pos
    return spans


def load_document(path: Path, metadata: dict | None, warnings: list[str] | None = None) -> SourceDocument:
    """Read one file; raise ``CorpusError`` naming the file when it cannot be used.

    What the reader noticed but could live with (pages without text…) goes to ``warnings``.
    """
    fmt = formats.for_suffix(path.suffix)
    if fmt is None:
        supported = ", ".join(formats.suffixes())
        kind = path.suffix or "no suffix"
        raise CorpusError(f"{path.name}: unsupported format ({kind}); supported: {supported}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path.name}: unreadable ({exc.strerror or exc})") from exc
    if not data.strip():
        raise CorpusError(f"{path.name}: empty file")
    try:
        extracted = fmt.read(data)
    except formats.FormatError as exc:
        raise CorpusError(f"{path.name}: {exc}") from exc
    if not extracted.blocks:
        raise CorpusError(f"{path.name}: empty (no readable content)")
    if warnings is not None:
        warnings.extend(f"{path.name}: {w}" for w in extracted.warnings)
    meta = dict(metadata or {})
    blocks = [b for b in extracted.blocks if not is_label(extracted.text, b, meta)]
    if not blocks:
        raise CorpusError(f"{path.name}: empty (no readable content)")
    title = meta.get("title") or extracted.title or _title_from_stem(path.stem)
    meta.setdefault("title", title)
    return SourceDocument(
        doc_id=path.stem,
        path=str(path),
        text=extracted.text,
        title=title,
        metadata=meta,
        blocks=blocks,
        content_hash=hashlib.sha256(data).hexdigest(),
        pages=extracted.pages,
        media_type=fmt.media_type,
    )


def _ignored(path: Path) -> str | None:
    """Why a folder entry is not a document at all (None: it should be one)."""
    if path.name == SOURCES_FILE or path.name.startswith("."):
        return ""  # the metadata, or a hidden file (.DS_Store, .gitkeep): nothing to say
    if path.name.startswith("~$"):
        return "an Office lock file (the document is open in an editor); ignored"
    if path.is_dir():
        return "a folder: documents in subfolders are not read"
    return None


def load_corpus(corpus_dir: Path) -> CorpusReport:
    """Load every file of the folder; problems are collected per file instead of aborting."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus folder not found: {corpus_dir}")
    sources, warnings = validate_sources(read_sources(corpus_dir))
    documents: list[SourceDocument] = []
    problems: list[str] = []
    by_id: dict[str, str] = {}
    for path in sorted(corpus_dir.iterdir()):
        why = _ignored(path)
        if why is not None:
            if why:
                warnings.append(f"{path.name}: {why}")
            continue
        if path.stem in by_id and formats.for_suffix(path.suffix):
            problems.append(
                f"{path.name}: same name as {by_id[path.stem]} (a document's id is its file name "
                "without the suffix); rename one of them"
            )
            continue
        meta = sources.get(path.stem)
        try:
            documents.append(load_document(path, meta, warnings))
        except CorpusError as exc:
            problems.append(str(exc))
            continue
        by_id[path.stem] = path.name
        if meta is None:
            warnings.append(f"{path.name}: not listed in {SOURCES_FILE}; title taken from the document")
    for doc_id in sorted(set(sources) - set(by_id)):
        if not any(p.startswith(f"{doc_id}.") for p in problems):
            warnings.append(f"{SOURCES_FILE} lists {doc_id!r} but the corpus has no such document")
    for problem in problems:
        log.warning("skipped %s", problem)
    for warning in warnings:
        log.warning("%s", warning)
    return CorpusReport(documents=documents, problems=problems, warnings=warnings)
