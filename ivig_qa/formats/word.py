"""Word documents (.docx) through python-docx: the body in reading order.

Paragraphs in a "Title" or "Heading N" style (or with an outline level) are section
headings; list paragraphs (numbered or bulleted, or in a "List …" style) become "• "
items; each table row is a block of its cells joined by `` | `` (a merged cell once).
Page headers, footers and comments live outside the body and are never read. A
password-protected file is not a .docx at all (Word wraps it in an OLE container) and is
reported as such, like an old binary .doc renamed to .docx.
"""

from __future__ import annotations

import io
import re
from importlib.metadata import version
from typing import Any

from ivig_qa.formats.base import Extracted, Format, FormatError, TextBuilder, collapse

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING_STYLE = re.compile(r"^(title|heading \d|subtitle)$", re.IGNORECASE)


def _style_name(paragraph: Any) -> str:
    try:
        return str(paragraph.style.name or "") if paragraph.style is not None else ""
    except (KeyError, AttributeError):  # a style id the styles part does not define
        return ""


def _is_heading(paragraph: Any) -> bool:
    if _HEADING_STYLE.match(_style_name(paragraph)):
        return True
    ppr = paragraph._p.pPr
    return ppr is not None and ppr.find(_qn("w:outlineLvl")) is not None


def _is_list_item(paragraph: Any) -> bool:
    ppr = paragraph._p.pPr
    numbered = ppr is not None and ppr.numPr is not None
    return numbered or _style_name(paragraph).lower().startswith("list")


def _qn(tag: str) -> str:
    from docx.oxml.ns import qn

    return qn(tag)


def _row_text(row: Any) -> str:
    cells: list[str] = []
    seen: set[int] = set()
    for cell in row.cells:
        if id(cell._tc) in seen:  # a merged cell is repeated once per grid column
            continue
        seen.add(id(cell._tc))
        text = collapse(" ".join(p.text for p in cell.paragraphs))
        if text:
            cells.append(text)
    return " | ".join(cells)


def read(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

    if data.startswith(OLE_MAGIC):
        raise FormatError(
            "password-protected, or an old binary Word file: save it from Word as a .docx without a password"
        )
    try:
        document = docx.Document(io.BytesIO(data))
        content = list(document.iter_inner_content())
    except Exception as exc:  # python-docx raises zip, XML and key errors for a damaged file
        raise FormatError(f"damaged or not a Word document ({type(exc).__name__}: {exc})") from exc
    out = TextBuilder()
    title = collapse(document.core_properties.title or "") or None
    for item in content:
        if isinstance(item, Table):
            for row in item.rows:
                out.block(_row_text(row))
            continue
        text = item.text
        if _is_heading(item):
            out.heading(text)
            if title is None and _style_name(item).lower() == "title":
                title = collapse(text) or None
        elif _is_list_item(item):
            out.block("• " + collapse(text) if collapse(text) else "")
        else:
            out.block(text)
    return out.result(title=title)


FORMAT = Format(
    name="Word",
    suffixes=(".docx",),
    media_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    version=f"1+python-docx-{version('python-docx')}",
    read=read,
)
