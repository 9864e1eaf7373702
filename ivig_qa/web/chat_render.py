"""The chat's Markdown: escaping, an answer being streamed, an answer with its list of sources,
and the landing view."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ivig_qa.engines.base import Lead
from ivig_qa.types import Status
from ivig_qa.web.catalog import Cited, SourceInfo, by_document, source_info, source_path

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")
URGENT_BANNER = "Urgent — get medical help now."

# Looks up what the app knows about a source (its metadata) by doc id; ``None`` when unknown.
MetadataOf = Callable[[str], Mapping[str, Any] | None]


# Everything shown that comes from a person or a source passes through ``md_text`` or
# ``md_answer`` first, so HTML typed into a question is displayed, never run.
def md_text(text: str) -> str:
    """Literal text inside Markdown: HTML escaped, Markdown punctuation backslash-escaped."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=False)


def md_answer(text: str) -> str:
    """The answer's own Markdown (bold titles, bullets, ``[n]``) with any HTML in it escaped."""
    return html.escape(text, quote=False).replace("`", "&#96;")


class Streamed:
    """The text of an answer being streamed, as it reads so far.

    Pieces are appended, except after a ``Lead`` (the LLM engine's quotes, shown at once): the
    pieces after it are the summary being written, which reads above the lead.
    """

    def __init__(self) -> None:
        self.before = ""
        self.lead: str | None = None
        self.after = ""

    def add(self, piece: str) -> None:
        if isinstance(piece, Lead):
            self.lead = str(piece)
        elif self.lead is None:
            self.before += piece
        else:
            self.after += piece

    @property
    def text(self) -> str:
        if self.lead is None:
            return self.before
        summary = self.after.strip()
        return self.before + (f"{summary}\n\n" if summary else "") + self.lead


def sources_markdown(citations: Iterable[Cited], metadata_of: MetadataOf) -> str:
    """One entry per cited source: its ``[n]`` markers, a link to read them in context, kind and publisher.

    The quotes themselves are already in the answer above, so they are not repeated here.
    """
    lines = ["**Sources**", ""]
    for doc_id, cited in by_document(citations):
        info: SourceInfo = source_info(doc_id, metadata_of(doc_id), cited[0])
        markers = " ".join(
            f"\\[{c.n}\\]" + (f" (page {c.page})" if getattr(c, "page", None) else "") for c in cited
        )
        # chat.js adds ", opens a new tab" to the link's name (Gradio's sanitizer drops aria-label).
        link = f"[Read “{md_text(info.title)}” in context]({source_path(doc_id, cited)})"
        entry = f"- {markers} {link}"
        if info.described:
            entry += f'  \n  <span class="ivig-kind">{md_text(info.described)}</span>'
        lines.append(entry)
    return "\n".join(lines)


def render_reply(status: Status, answer: str, citations: list[Any], metadata_of: MetadataOf) -> str:
    """An answer as chat Markdown: urgent banner first, the answer, then its sources."""
    parts: list[str] = []
    if status == Status.URGENT_CARE:
        # The blank line ends the HTML block, so the answer below is still read as Markdown.
        parts.append(f'<div class="ivig-urgent" role="alert"><strong>{URGENT_BANNER}</strong></div>\n\n')
    parts.append(md_answer(answer))
    if citations:
        parts.append("\n\n" + sources_markdown(citations, metadata_of))
    return "".join(parts)


def landing_markdown(sources: list[SourceInfo]) -> str:
    """What an empty conversation shows: how to start, and which sources the answers come from."""
    lines = ["**Ask a question about IVIG, or pick an example.**"]
    if sources:
        lines += ["", "Answers are quoted word for word from these sources:", ""]
        for s in sources:
            described = f" — {md_text(s.described)}" if s.described else ""
            lines.append(f"- {md_text(s.title)}{described}")
    return "\n".join(lines)
