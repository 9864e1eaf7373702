"""What a reader is told about each source (title, kind, publisher) and the links to read it in context."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import quote

MAX_MARKS = 40  # highlighted spans per source-page link; more are ignored
_MARK = re.compile(r"^(?:(\d{1,4}):)?(\d{1,9})-(\d{1,9})$")


class Cited(Protocol):
    """What a citation must have to be listed: ``Citation`` or a restored one."""

    n: int
    doc_id: str
    title: str
    start: int
    end: int


@dataclass(frozen=True)
class SourceInfo:
    """A source as the sources list and the landing view name it."""

    doc_id: str
    title: str
    kind: str = ""
    publisher: str = ""

    @property
    def described(self) -> str:
        """``Patient-community article · Health Rising`` (empty when neither is known)."""
        kind = self.kind[:1].upper() + self.kind[1:]
        return " · ".join(part for part in (kind, self.publisher) if part)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def source_info(doc_id: str, metadata: Mapping[str, Any] | None, citation: object = None) -> SourceInfo:
    """Title, kind and publisher of a source, read defensively.

    The served source's title wins (a restored conversation's citations come from the
    browser); ``kind``/``publisher`` come from the citation when ``Citation`` carries them,
    else from the source's metadata (``sources.toml``); a source without metadata still
    gets its citation's title.
    """
    meta = metadata or {}

    def pick(name: str) -> str:
        return _text(getattr(citation, name, None)) or _text(meta.get(name))

    title = _text(meta.get("title")) or _text(getattr(citation, "title", None)) or doc_id
    return SourceInfo(doc_id=doc_id, title=title, kind=pick("kind"), publisher=pick("publisher"))


def catalog(sources: Mapping[str, Any]) -> list[SourceInfo]:
    """Every source the app serves (``SourceView``-like values with ``title`` and ``metadata``), by title."""
    infos = [source_info(doc_id, getattr(view, "metadata", None), view) for doc_id, view in sources.items()]
    return sorted(infos, key=lambda s: s.title.casefold())


def by_document(citations: Iterable[Cited]) -> list[tuple[str, list[Cited]]]:
    """Citations grouped per document, documents in the order of their first ``[n]``."""
    groups: dict[str, list[Cited]] = {}
    for c in sorted(citations, key=lambda c: c.n):
        groups.setdefault(c.doc_id, []).append(c)
    return list(groups.items())


def source_path(doc_id: str, citations: Iterable[Cited]) -> str:
    """The source page with each cited span highlighted and labelled with its ``[n]``."""
    marks = "&".join(f"span={c.n}:{c.start}-{c.end}" for c in citations)
    return f"/sources/{quote(doc_id, safe='')}" + (f"?{marks}" if marks else "") + "#quote"


@dataclass(frozen=True)
class Mark:
    """One span to highlight on a source page (file offsets), labelled ``[n]`` when ``n`` is known."""

    start: int
    end: int
    n: int | None = None


def parse_marks(values: Iterable[str] | None, start: int | None = None, end: int | None = None) -> list[Mark]:
    """``span=N:START-END`` query values (bad ones skipped), plus the older ``start``/``end`` pair."""
    marks: list[Mark] = []
    for value in values or []:
        m = _MARK.match(value.strip())
        if m and int(m.group(2)) < int(m.group(3)):
            marks.append(Mark(int(m.group(2)), int(m.group(3)), int(m.group(1)) if m.group(1) else None))
        if len(marks) >= MAX_MARKS:
            break
    if start is not None and end is not None and start < end:
        marks.append(Mark(start, end))
    return sorted(marks, key=lambda k: (k.start, k.end))
