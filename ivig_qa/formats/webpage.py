"""Web pages (.html, .htm) through BeautifulSoup with the standard library's parser.

The extracted text is the page's visible article: entities decoded, no markup; scripts,
styles, forms, navigation, banners, side bars and footers dropped; ``<main>`` (or the one
``<article>``) is the article when the page has one. ``<h1>``–``<h6>`` become section
headings; paragraphs, list items and table rows become blocks (a row's cells joined by
`` | ``).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from ivig_qa.formats.base import Extracted, Format, FormatError, TextBuilder, collapse

# Never content: code, styling, embedded objects, forms and the page's chrome.
HIDDEN_TAGS = (
    "head", "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object",
    "embed", "form", "button", "select", "input", "textarea", "nav", "footer", "aside", "dialog",
)  # fmt: skip
HIDDEN_ROLES = ["navigation", "banner", "contentinfo", "complementary", "search", "dialog", "menu"]
HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Elements that end the running paragraph (their text is a block of its own).
BLOCK_TAGS = frozenset(
    (
        "address", "article", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "header", "hgroup", "hr", "li", "main", "ol", "p", "pre",
        "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    )
)  # fmt: skip


def _drop_chrome(soup: Any) -> None:
    """Remove what is never article text, before the walk."""
    hidden = [
        *soup.find_all(list(HIDDEN_TAGS)),
        *soup.find_all(attrs={"role": HIDDEN_ROLES}),
        *soup.find_all(attrs={"aria-hidden": "true"}),
        *soup.find_all(hidden=True),
        # A page-level <header> is the site's banner; an article's own <header> holds its title.
        *(t for t in soup.find_all("header") if t.find_parent(["article", "main"]) is None),
    ]
    for tag in hidden:
        if not tag.decomposed:
            tag.decompose()


def _article(soup: Any) -> Any:
    """The part of the page that is the article."""
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    if main is not None:
        return main
    articles = soup.find_all("article")
    if len(articles) == 1:
        return articles[0]
    return soup.body or soup


class _Walker:
    """Walks the article in document order, writing headings and blocks."""

    def __init__(self) -> None:
        from bs4 import NavigableString

        self.out = TextBuilder()
        self.plain = NavigableString  # only plain strings: comments, CDATA, doctypes are not text
        self.pending: list[str] = []
        self.prefix = ""

    def flush(self) -> None:
        text = collapse("".join(self.pending))
        self.pending = []
        if text:
            self.out.block(self.prefix + text)
        self.prefix = ""

    def walk(self, node: Any) -> None:
        for child in node.children:
            if type(child) is self.plain:
                self.pending.append(str(child))
            elif getattr(child, "name", None) is None:
                continue
            elif child.name in HEADINGS:
                self.flush()
                self.out.heading(child.get_text(" "))
            elif child.name == "br":
                self.pending.append(" ")
            elif child.name == "tr":
                self.flush()
                cells = [collapse(c.get_text(" ")) for c in child.find_all(["td", "th"], recursive=False)]
                self.out.block(" | ".join(c for c in cells if c))
            elif child.name == "li":
                self.flush()
                self.prefix = "• "
                self.walk(child)
                self.flush()
            elif child.name in BLOCK_TAGS:
                self.flush()
                self.walk(child)
                self.flush()
            else:
                self.walk(child)


def read(data: bytes) -> Extracted:
    """The page's article text; the encoding comes from the page (BOM, ``<meta charset>``)."""
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception as exc:  # the parser raises assorted errors on garbage
        raise FormatError(f"not a readable web page ({exc})") from exc
    title_tag = soup.find("title")
    title = collapse(title_tag.get_text(" ")) if title_tag is not None else ""
    _drop_chrome(soup)
    walker = _Walker()
    walker.walk(_article(soup))
    walker.flush()
    return walker.out.result(title=title or None)


FORMAT = Format(
    name="web page",
    suffixes=(".html", ".htm"),
    media_type="text/html",
    version=f"1+bs4-{version('beautifulsoup4')}",
    read=read,
)
