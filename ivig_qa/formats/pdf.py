"""PDF (.pdf) through pypdf (BSD): the text layer, page by page, laid out as paragraphs.

From the characters pypdf extracts (with their font size and weight) the reader rebuilds
what a patient sees on the page:

* running headers, footers and page numbers are furniture: a line at the top or bottom of
  pages that repeats (digits aside) on at least half of them, or a bare page number there;
* a line in a larger or bolder font than the body, short and without a full stop, is a
  section heading (two such lines in a row are one wrapped heading);
* hard-wrapped lines are joined into paragraphs (a line that stops well short of the
  body's width ends its paragraph), a paragraph running over a page break stays one, and
  a word hyphenated at a line break is rejoined ("treat-" + "ment"), keeping the hyphen
  only where both halves are words of their own ("follow-up", "IVIG-related");
* bullets become "• " list items.

The result depends only on the file's bytes (and pypdf's version, which is part of the
format's version), so offsets into it are stable. No text layer at all (a scan) is a
``FormatError``: OCR is not supported.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from ivig_qa.formats.base import Extracted, Format, FormatError, TextBuilder, collapse
from ivig_qa.text import english

EDGE_LINES = 3  # lines at the top and at the bottom of a page where headers and footers sit
REPEAT_SHARE = 0.5  # an edge line on at least this share of the pages is a running header/footer
HEADING_SIZE_RATIO = 1.15
MAX_HEADING_CHARS = 120
FULL_LINE_SHARE = 0.85  # of the body's usual line length: shorter ends a paragraph
RARE_WORD, COMMON_WORD = 100, 10_000  # word counts in the English dictionary (keeps_hyphen)
PARAGRAPH_GAP = 1.3  # times the usual line spacing: a wider gap between two lines ends a paragraph
BULLET_GLYPHS = "•●▪◦‣∙·○■□➢►✓✔"
_BULLET = re.compile(rf"^(?:[{BULLET_GLYPHS}]|[-–*](?=\s))\s*")
_ENUMERATOR = re.compile(r"^(?:\d{1,2}|[a-z])[.)]\s")
_PAGE_NUMBER = re.compile(
    r"^(?:page\s*)?[-–—(]?\s*\d{1,4}\s*[-–—)]?(?:\s*(?:/|of)\s*\d{1,4})?$", re.IGNORECASE
)
_TERMINAL = re.compile(r"[.!?:;][\"'”’)\]]*$")
_BOLD = re.compile(r"bold|black|heavy|semibold|demi", re.IGNORECASE)
_JUNK_TITLE = re.compile(
    r"^microsoft word - |\.(docx?|pdf|indd|odt)$|^\(?(anonymous|untitled)\)?$", re.IGNORECASE
)


@dataclass
class Line:
    """One line of a page's text with its dominant font size and weight."""

    text: str
    size: float
    bold: bool
    page: int
    marker: bool = False  # only a bullet glyph (the item's text is on the next line)
    y: float | None = None  # the baseline's height on the page (PDF units, up is more)


def _placement(
    size: float, cm: Sequence[float] | None, tm: Sequence[float] | None
) -> tuple[float, float | None]:
    """The font size as drawn (the Tf size scaled by the text and transformation matrices)
    and the height of the text's baseline on the page."""
    if not tm or not cm:
        return float(size), None
    c = tm[2] * cm[0] + tm[3] * cm[2]
    d = tm[2] * cm[1] + tm[3] * cm[3]
    y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
    return float(size) * math.hypot(c, d), float(y)


def _clean(raw: str) -> tuple[str, bool]:
    """The line's text without control or private-use glyphs; True when only such a glyph was there."""
    kept = "".join(ch for ch in raw if unicodedata.category(ch) not in ("Cc", "Co", "Cf") or ch == "\u00ad")
    text = collapse(kept)
    text = text[:-1].replace("\u00ad", "") + text[-1:]  # a soft hyphen only matters at the line's end
    marker = not text and bool(raw.strip())
    if text and all(ch in BULLET_GLYPHS for ch in text.replace(" ", "")):
        return "", True
    return text, marker


def _page_lines(page: Any, number: int) -> list[Line]:
    """The page's lines, each with the font size and weight most of its characters have."""
    pieces: list[tuple[str, float, bool, float | None]] = []

    def visit(text: str, cm: Any, tm: Any, font: Any, size: float) -> None:
        if text:
            name = str((font or {}).get("/BaseFont", ""))
            drawn, y = _placement(size or 0.0, cm, tm)
            pieces.append((text, drawn, bool(_BOLD.search(name)), y))

    text = page.extract_text(visitor_text=visit)
    if "".join(p[0] for p in pieces) != text:  # fonts unknown: the text alone
        pieces = [(text, 0.0, False, None)]
    lines: list[Line] = []
    current: list[str] = []
    weights: Counter[tuple[float, bool]] = Counter()
    heights: list[float | None] = []

    def close() -> None:
        clean, marker = _clean("".join(current))
        if clean or marker:
            (size, bold), _ = max(weights.items(), key=lambda kv: (kv[1], kv[0])) if weights else ((0, 0), 0)
            y = next((h for h in heights if h is not None), None)
            lines.append(Line(clean, float(size), bool(bold), number, marker, y))
        current.clear()
        weights.clear()
        heights.clear()

    for piece, size, bold, y in pieces:
        for i, part in enumerate(piece.split("\n")):
            if i:
                close()
            current.append(part)
            weights[(round(size, 1), bold)] += len(part.strip())
            if part.strip():
                heights.append(y)
    close()
    return lines


def _edge_key(text: str) -> str:
    return re.sub(r"\d+", "#", text.lower())


def keeps_hyphen(left: str, right: str, document: Counter[str]) -> bool:
    """Whether "left-" at a line's end and "right" on the next line are a hyphenated compound.

    The document's own spelling decides first ("follow-up" elsewhere in it, or "followup");
    then English: two common words that make a rare or unknown one ("follow" + "up") keep
    the hyphen, a word split in two ("treat" + "ment", "immuno" + "globulin") loses it.
    """
    a, b = left.lower(), right.lower()
    if document[f"{a}-{b}"] != document[a + b]:
        return document[f"{a}-{b}"] > document[a + b]
    if any(ch.isupper() for ch in left[1:]) or any(ch.isdigit() for ch in left):
        return True  # "IVIG-related", "COVID19-"
    freq = english().word_frequency
    if len(a) < 2 or not (freq[a] and freq[b]):
        return False
    return freq[a + b] == 0 or (freq[a + b] < RARE_WORD and min(freq[a], freq[b]) >= COMMON_WORD)


def spellings(lines: list[Line]) -> Counter[str]:
    """How often each word and hyphenated compound is written in the document (lower case)."""
    counts: Counter[str] = Counter()
    for ln in lines:
        counts.update(m.group().lower() for m in re.finditer(r"[^\W\d_]+(?:-[^\W\d_]+)*", ln.text))
    return counts


@dataclass(frozen=True)
class _Body:
    size: float
    bold: bool
    full: int  # characters in a full-width line of body text
    spacing: float | None  # the usual distance between two lines of a paragraph


def _body(lines: list[Line]) -> _Body:
    fonts: Counter[tuple[float, bool]] = Counter()
    for ln in lines:
        fonts[(ln.size, ln.bold)] += len(ln.text)
    (size, bold), _ = max(fonts.items(), key=lambda kv: (kv[1], kv[0]))
    body = [ln for ln in lines if ln.size == size]
    lengths = sorted(len(ln.text) for ln in body)
    gaps = sorted(
        round(a.y - b.y, 1)
        for a, b in itertools.pairwise(body)
        if a.page == b.page and a.y is not None and b.y is not None and a.y > b.y
    )
    spacing = gaps[len(gaps) // 4] if gaps else None  # paragraph gaps are the larger ones
    return _Body(size, bold, lengths[int(0.8 * (len(lengths) - 1))], spacing)


def drop_furniture(pages: list[list[Line]], body: _Body) -> list[list[Line]]:
    """Pages without their running headers, footers and page numbers.

    A running header is not larger than the body text (a section heading that happens to
    top two pages, "Section 2", "Section 3", is not furniture) and repeats at the same edge.
    """
    with_text = [p for p in pages if any(ln.text for ln in p)]
    need = max(2, math.ceil(REPEAT_SHARE * len(with_text)))

    def edge(p: list[Line], i: int) -> str | None:
        if i < EDGE_LINES:
            return "top"
        return "bottom" if i >= len(p) - EDGE_LINES else None

    seen: Counter[tuple[str, str]] = Counter()
    for p in pages:
        seen.update({(e, _edge_key(ln.text)) for i, ln in enumerate(p) if ln.text and (e := edge(p, i))})
    repeated = {k for k, n in seen.items() if n >= need} if len(with_text) >= 2 else set()

    def furniture(p: list[Line], i: int) -> bool:
        e = edge(p, i)
        if e is None or not p[i].text:
            return False
        small = p[i].size <= body.size or not p[i].size
        return bool(_PAGE_NUMBER.match(p[i].text)) or (small and (e, _edge_key(p[i].text)) in repeated)

    kept: list[list[Line]] = []
    for p in pages:
        drop = [furniture(p, i) for i in range(len(p))]
        # A bullet glyph whose item was furniture goes with it.
        drop = [
            d or (ln.marker and (i + 1 == len(p) or drop[i + 1]))
            for i, (ln, d) in enumerate(zip(p, drop, strict=True))
        ]
        kept.append([ln for ln, d in zip(p, drop, strict=True) if not d])
    return kept


def _is_heading(line: Line, body: _Body) -> bool:
    text = line.text
    if not text or len(text) > MAX_HEADING_CHARS or not line.size or _BULLET.match(text):
        return False
    if text.endswith((".", ",", ";")) or not (text[0].isupper() or text[0].isdigit()):
        return False
    larger = line.size >= body.size * HEADING_SIZE_RATIO
    bolder = line.bold and not body.bold and line.size >= body.size * 0.95
    return larger or bolder


def _continues(prev: Line, line: Line, body: _Body) -> bool:
    """Whether ``line`` carries on the paragraph whose last line is ``prev``.

    On one page a wider gap than the usual line spacing ends the paragraph; otherwise a
    full-width line goes on, and a short one goes on only mid-sentence (next line lower case).
    """
    placed = prev.page == line.page and body.spacing and prev.y is not None and line.y is not None
    if placed and (prev.y - line.y > PARAGRAPH_GAP * body.spacing or prev.y < line.y):
        return False
    if len(prev.text) >= FULL_LINE_SHARE * body.full:
        return True
    return line.text[:1].islower() and not _TERMINAL.search(prev.text)


class _Layout:
    """Turns the kept lines into headings and paragraphs in a ``TextBuilder``."""

    def __init__(self, body: _Body, document: Counter[str]) -> None:
        self.body = body
        self.document = document
        self.out = TextBuilder()
        self.heading: list[Line] = []
        self.paragraph: list[list[Any]] = []  # [joiner, text, page]
        self.prev: Line | None = None
        self.bullet_next = False

    def flush_heading(self) -> None:
        if self.heading:
            self.out.page(self.heading[0].page)
            self.out.heading(" ".join(h.text for h in self.heading))
            self.heading = []

    def flush_paragraph(self) -> None:
        for i, (joiner, text, page) in enumerate(self.paragraph):
            self.out.page(page)
            if i == 0:
                self.out.end_block()
            self.out.add(text, joiner)
        self.out.end_block()
        self.paragraph = []
        self.prev = None

    def _join(self, line: Line) -> None:
        last = self.paragraph[-1]
        joiner = " "
        if last[1].endswith("\u00ad"):
            last[1], joiner = last[1][:-1], ""
        else:
            left = re.search(r"([^\W\d_]+)-$", last[1])
            right = re.match(r"[^\W\d_]+", line.text)
            if left and right and line.text[0].islower():
                joiner = ""
                if not keeps_hyphen(left.group(1), right.group(), self.document):
                    last[1] = last[1][:-1]
        self.paragraph.append([joiner, line.text, line.page])

    def line(self, line: Line) -> None:
        if line.marker:
            self.flush_heading()
            self.flush_paragraph()
            self.bullet_next = True
            return
        if _is_heading(line, self.body):
            self.flush_paragraph()
            last = self.heading[-1] if self.heading else None
            if last and (last.size != line.size or last.page != line.page):
                self.flush_heading()
            self.heading.append(line)
            return
        self.flush_heading()
        text = line.text
        item = self.bullet_next or bool(_BULLET.match(text)) or bool(_ENUMERATOR.match(text))
        if item and not _ENUMERATOR.match(text):
            text = "• " + _BULLET.sub("", text)
        self.bullet_next = False
        if item or self.prev is None or not _continues(self.prev, line, self.body):
            self.flush_paragraph()
            self.paragraph = [[" ", text, line.page]]
        else:
            self._join(Line(text, line.size, line.bold, line.page, y=line.y))
        self.prev = line

    def result(self, title: str | None, warnings: list[str]) -> Extracted:
        self.flush_heading()
        self.flush_paragraph()
        return self.out.result(title=title, warnings=warnings)


def _metadata_title(reader: Any) -> str | None:
    try:
        title = collapse(str((reader.metadata or {}).get("/Title") or ""))
    except Exception:  # a damaged info dictionary is no reason to refuse the text
        return None
    return title if title and not _JUNK_TITLE.search(title) else None


def _open(data: bytes) -> Any:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:  # pypdf raises many types for a damaged or non-PDF file
        raise FormatError(f"damaged or not a PDF ({exc})") from exc
    if reader.is_encrypted:
        try:
            unlocked = reader.decrypt("") != PasswordType.NOT_DECRYPTED
        except Exception:  # an encryption pypdf cannot undo
            unlocked = False
        if not unlocked:
            raise FormatError("encrypted: it needs a password to open; save a copy without a password")
    return reader


def read(data: bytes) -> Extracted:
    reader = _open(data)
    warnings: list[str] = []
    pages: list[list[Line]] = []
    try:
        page_list = list(reader.pages)
    except Exception as exc:
        raise FormatError(f"damaged PDF: its pages cannot be read ({exc})") from exc
    for number, page in enumerate(page_list, start=1):
        try:
            pages.append(_page_lines(page, number))
        except Exception as exc:  # one broken page must not lose the others
            warnings.append(f"page {number} could not be read ({exc}) and is not indexed")
            pages.append([])
    if not any(ln.text for p in pages for ln in p):
        raise FormatError(
            "no text layer (a scanned or image-only PDF?): OCR is not supported; "
            "add a PDF with selectable text or a .txt copy"
        )
    blank = [str(i) for i, p in enumerate(pages, start=1) if not any(ln.text for ln in p)]
    if blank:
        warnings.append(
            f"page{'s' if len(blank) > 1 else ''} {', '.join(blank)} "
            "ha{} no text layer (scanned?) and {} not indexed: OCR is not supported".format(
                *(("ve", "are") if len(blank) > 1 else ("s", "is"))
            )
        )
    body = _body([ln for p in pages for ln in p if ln.text])
    lines = [ln for p in drop_furniture(pages, body) for ln in p]
    layout = _Layout(body, spellings(lines))
    for ln in lines:
        layout.line(ln)
    first_headings = [ln for ln in lines if _is_heading(ln, body) and ln.page == lines[0].page]
    fallback = max(first_headings, key=lambda ln: ln.size).text if first_headings else None
    return layout.result(_metadata_title(reader) or fallback, warnings)


FORMAT = Format(
    name="PDF",
    suffixes=(".pdf",),
    media_type="application/pdf",
    version=f"1+pypdf-{version('pypdf')}",
    read=read,
)
