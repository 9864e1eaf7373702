"""The few types that flow between the stages of the pipeline.

``SourceDocument`` → ``Chunk`` (with ``Sentence`` spans) → ``ScoredPassage`` → ``Answer``
(with ``Citation``). Offsets always point into the document's text (the file itself for
.txt/.md, the text its format reader extracts for PDF, Word and HTML), so a quote can be
checked and highlighted in its source.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Span:
    """A half-open character range ``[start, end)`` in a document's text."""

    start: int
    end: int


@dataclass(frozen=True)
class Block:
    """A paragraph or list item of content (furniture removed), with its section heading."""

    span: Span
    heading: str


@dataclass
class SourceDocument:
    """One file of the corpus: its text, metadata and where the content is.

    ``pages`` lists ``(offset, page number)`` where each page's text starts (PDF only).
    """

    doc_id: str
    path: str
    text: str
    title: str
    metadata: dict[str, Any]
    blocks: list[Block]
    content_hash: str
    pages: tuple[tuple[int, int], ...] = ()
    media_type: str = "text/plain; charset=utf-8"

    def page_at(self, offset: int) -> int | None:
        """The page the character at ``offset`` is on (None for formats without pages)."""
        i = bisect_right([o for o, _ in self.pages], offset)
        return self.pages[max(i - 1, 0)][1] if self.pages else None

    def cleaned_text(self) -> str:
        """The document without page furniture, for showing a citation in context."""
        return "\n\n".join(self.text[b.span.start : b.span.end] for b in self.blocks)


@dataclass(frozen=True)
class Sentence:
    """A sentence (or list item) of a document, located by offsets."""

    doc_id: str
    start: int
    end: int
    text: str
    page: int | None = None

    @property
    def sentence_id(self) -> str:
        return f"{self.doc_id}@{self.start}"


@dataclass
class Chunk:
    """A few consecutive sentences of one section: the unit that is embedded and retrieved."""

    chunk_id: str
    doc_id: str
    title: str
    heading: str
    start: int
    end: int
    text: str
    sentences: list[Sentence] = field(default_factory=list)

    def context_text(self) -> str:
        """What gets embedded: title and heading give the passage its topic."""
        heading = f" — {self.heading}" if self.heading else ""
        return f"{self.title}{heading}\n{self.text}"

    def page_at(self, offset: int) -> int | None:
        """The page of the sentence at (or last before) ``offset``; None without pages."""
        before = [s.page for s in self.sentences if s.start <= offset]
        return before[-1] if before else (self.sentences[0].page if self.sentences else None)


@dataclass
class ScoredPassage:
    """A retrieved chunk with its fused retrieval score and its dense similarity."""

    chunk: Chunk
    score: float
    similarity: float
    rank: int


class Status(StrEnum):
    ANSWERED = "answered"
    NOT_IN_SOURCES = "not_in_sources"
    PERSONAL_ADVICE = "personal_advice"
    URGENT_CARE = "urgent_care"
    INVALID_INPUT = "invalid_input"


class Reason(BaseModel):
    """Why an answer got its status: a rule or concept id, the layer that fired, a score."""

    id: str = Field(description="Rule or concept id, e.g. 'urgent.anaphylaxis' or 'scope.unknown_term'.")
    layer: str = Field(description="What decided: input, pattern, semantic, scope, retrieval, injection…")
    score: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """The kind of answer to give, and why (``policy.decide``)."""

    status: Status
    reasons: tuple[Reason, ...]
    unknown_terms: tuple[str, ...] = ()
    injection: bool = False
    uncovered: tuple[str, ...] = ()
    """Parts of the question the sources don't cover while the rest is answered."""
    symptom: str = ""
    """"mild": a symptom someone has now that is not a red flag; "past": one that has gone."""
    language: str = ""
    """The message's language (ISO 639-1, "und" when unsure) when it is mostly not English."""


class Citation(BaseModel):
    """One ``[n]`` of an answer: the quoted sentence(s) and the passage they come from."""

    n: int
    doc_id: str
    title: str
    chunk_id: str
    text: str = Field(description="The retrieved passage.")
    quote: str = Field(description="The sentence(s) the answer used, verbatim.")
    start: int = Field(description="Offset of the quote in the source's text (see /api/sources).")
    end: int
    score: float
    page: int | None = Field(None, description="The PDF page the quote starts on (null without pages).")
    publisher: str | None = Field(None, description="Who published the source (corpus/sources.toml).")
    kind: str | None = Field(None, description="What kind of source it is, e.g. 'review abstract'.")


class Answer(BaseModel):
    """What every entry point returns; serialises to the JSON contract in docs/design.md."""

    status: Status
    answer: str
    citations: list[Citation] = Field(default_factory=list)
    disclaimer: str
    question: str
    standalone_question: str
    engine: str
    reasons: list[Reason] = Field(default_factory=list, description="Why the answer got its status.")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    answer_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Message(BaseModel):
    """One turn of the conversation history."""

    role: str = Field(pattern="^(user|assistant)$")
    content: str
