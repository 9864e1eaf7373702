"""What every format reader returns, and the pieces readers share.

A reader turns a file's bytes into ``Extracted``: the document's text (derived
deterministically from the bytes, so the same file always gives the same offsets), its
content blocks with their section headings, and for paged formats where each page starts.
``TextBuilder`` assembles that text block by block; ``Furniture`` is the reviewed list of
page furniture (``data/furniture.toml``) every format drops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from ivig_qa import data
from ivig_qa.types import Block, Span


class FormatError(Exception):
    """The file cannot be read as its format; the message says why in an operator's words."""


@dataclass(frozen=True)
class Extracted:
    """A document as a reader found it: text, blocks into that text, and where pages start."""

    text: str
    blocks: list[Block]
    title: str | None = None
    pages: tuple[tuple[int, int], ...] = ()  # (offset, page number), ascending; () without pages
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    """One document format: the suffixes it claims and how to read it.

    ``version`` changes whenever the reader would extract different text from the same
    bytes (it includes the parsing library's version), so the index re-embeds the documents.
    """

    name: str
    suffixes: tuple[str, ...]
    media_type: str
    version: str
    read: Callable[[bytes], Extracted]


def collapse(text: str) -> str:
    """Whitespace runs (non-breaking spaces and line breaks included) as one space, trimmed."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Furniture:
    """Lines that are not part of the article (share buttons, comment forms…)."""

    lines: tuple[re.Pattern[str], ...]
    trailers: tuple[re.Pattern[str], ...]

    @classmethod
    @cache
    def load(cls) -> Furniture:
        rules = data.load("furniture.toml")
        compiled = lambda pats: tuple(re.compile(p, re.IGNORECASE) for p in pats)  # noqa: E731
        return cls(compiled(rules["line_patterns"]), compiled(rules["trailer_patterns"]))

    def is_line(self, text: str) -> bool:
        """A line to drop."""
        return any(p.search(text.strip()) for p in self.lines)

    def starts_trailer(self, text: str) -> bool:
        """A line that starts the trailer: it and everything after it is dropped."""
        return any(p.search(text.strip()) for p in self.trailers)


class TextBuilder:
    """Writes a document's extracted text: headings and blocks separated by blank lines.

    Headings go into the text (it reads like the document) but are not blocks; each block
    remembers the heading above it. ``page`` marks where a new page's text begins, so a
    paragraph running over a page break stays one block.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self._open = False
        self._block_start = 0
        self._page: int | None = None
        self._pending_page: int | None = None
        self.blocks: list[Block] = []
        self.pages: list[tuple[int, int]] = []
        self.current_heading = ""
        self._trailer = False
        self._furniture = Furniture.load()

    def _write(self, text: str) -> None:
        self._parts.append(text)
        self._length += len(text)

    def _separate(self) -> None:
        if self._length:
            self._write("\n\n")

    def page(self, number: int) -> None:
        """The text written from now on is on page ``number``."""
        self._pending_page = number

    def _mark_page(self) -> None:
        if self._pending_page is not None and self._pending_page != self._page:
            self.pages.append((self._length, self._pending_page))
            self._page = self._pending_page
        self._pending_page = None

    def heading(self, text: str) -> None:
        """A section heading (blocks after it belong to its section)."""
        text = collapse(text)
        if not text or self._trailer or self._dropped(text):
            return
        self.end_block()
        self._separate()
        self._mark_page()
        self._write(text)
        self.current_heading = text.rstrip(":").strip()

    def block(self, text: str) -> None:
        """One whole paragraph, list item or table row."""
        self.end_block()
        self.add(text)
        self.end_block()

    def add(self, text: str, joiner: str = " ") -> None:
        """Continue the open block with ``text`` (opening one if none is open)."""
        text = collapse(text)
        if not text or self._trailer:
            return
        if not self._open:
            if self._dropped(text):
                return
            self._separate()
            self._mark_page()
            self._block_start = self._length
            self._open = True
        else:
            self._write(joiner)
            self._mark_page()
        self._write(text)

    def end_block(self) -> None:
        if self._open:
            self.blocks.append(Block(Span(self._block_start, self._length), self.current_heading))
            self._open = False

    def _dropped(self, text: str) -> bool:
        if self._furniture.starts_trailer(text):
            self._trailer = True
            return True
        return self._furniture.is_line(text)

    @property
    def ended_by_trailer(self) -> bool:
        return self._trailer

    def result(self, title: str | None = None, warnings: list[str] | None = None) -> Extracted:
        self.end_block()
        return Extracted(
            text="".join(self._parts),
            blocks=list(self.blocks),
            title=title,
            pages=tuple(self.pages),
            warnings=list(warnings or []),
        )
