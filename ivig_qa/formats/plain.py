"""Plain text and Markdown (.txt, .md): the file's own text, blocks located in place.

Page furniture (share buttons, subscribe boxes, comment sections) is removed by locating
the *content blocks* of the text rather than by rewriting it, so every offset a citation
carries points into the file exactly as it is on disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ivig_qa.formats.base import Extracted, Format, FormatError, Furniture
from ivig_qa.types import Block, Span

MAX_HEADING_CHARS = 120
# A line ending like this is a sentence; "Chronic Fatigue Syndrome (ME/CFS)" is not.
_TERMINAL = (".", "!", "?", '."', ".”", "!”", "?”", ".)")


def _lines(text: str) -> Iterator[Span]:
    """Spans of non-blank lines, trimmed of surrounding whitespace."""
    for m in re.finditer(r"[^\n]+", text):
        raw = m.group()
        left = len(raw) - len(raw.lstrip())
        right = len(raw.rstrip())
        if right > left:
            yield Span(m.start() + left, m.start() + right)


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


def find_blocks(text: str) -> list[Block]:
    """Split text into content blocks, dropping furniture and attaching section headings."""
    furniture = Furniture.load()
    lines = list(_lines(text))
    blocks: list[Block] = []
    heading = ""
    for i, span in enumerate(lines):
        bare = text[span.start : span.end].strip()
        if furniture.starts_trailer(bare):
            break
        if furniture.is_line(bare):
            continue
        prev_blank = i == 0 or "\n\n" in text[lines[i - 1].end : span.start]
        next_blank = i + 1 == len(lines) or "\n\n" in text[span.end : lines[i + 1].start]
        if bare.startswith("#") or _is_heading(bare, next_blank, prev_blank):
            heading = _strip_markup_heading(bare)
            continue
        blocks.append(Block(span=span, heading=heading))
    return blocks


def read(data: bytes) -> Extracted:
    """UTF-8 text as it is on disk (a byte-order mark is skipped, offsets count after it)."""
    if b"\x00" in data[:4096]:
        raise FormatError("looks binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return Extracted(text=text, blocks=find_blocks(text))


FORMAT = Format(
    name="text",
    suffixes=(".txt", ".md"),
    media_type="text/plain; charset=utf-8",
    version="1",
    read=read,
)
