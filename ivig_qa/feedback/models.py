"""What a rating is: the request a client sends, what the server knew about the answer, the stored row."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ivig_qa.policy.input import unreadable

if TYPE_CHECKING:
    from ivig_qa.types import Answer

Rating = Literal["up", "down"]


class FeedbackIn(BaseModel):
    """A rating as a client sends it (the HTTP API validates requests against this):
    no other fields, and no control characters (the domain's rule for text, ``unreadable``)."""

    model_config = ConfigDict(extra="forbid")

    answer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    rating: Rating
    comment: str | None = Field(None, max_length=2000)
    question: str | None = Field(None, max_length=8000, description="Stored only when log_questions is on.")

    @field_validator("comment", "question")
    @classmethod
    def _readable(cls, text: str | None) -> str | None:
        if text is not None and unreadable(text):
            raise ValueError("contains characters that are not readable text (binary or control characters)")
        return text


class CitedSource(BaseModel):
    """One source an answer quoted: enough to open it again, nothing of the question."""

    n: int
    doc_id: str
    chunk_id: str
    title: str


class AnswerFacts(BaseModel):
    """What the server knew about an answer it issued, stored with the answer's rating.

    Reason ids only (a reason's ``detail`` can echo words of the question), the cited
    sources, the index version and the engine: enough for a care team to review a
    thumbs-down without the question text.
    """

    status: str
    reasons: list[str] = Field(default_factory=list)
    cited: list[CitedSource] = Field(default_factory=list)
    index_version: str | None = None
    engine: str = ""

    @classmethod
    def of(cls, answer: Answer, index_version: str | None) -> AnswerFacts:
        return cls(
            status=answer.status.value,
            reasons=[r.id for r in answer.reasons],
            cited=[
                CitedSource(n=c.n, doc_id=c.doc_id, chunk_id=c.chunk_id, title=c.title)
                for c in answer.citations
            ],
            index_version=index_version,
            engine=answer.engine,
        )


class FeedbackRecord(FeedbackIn):
    """A stored rating, with the facts of its answer when the server that rated it had issued it."""

    id: int
    created_at: datetime
    facts: AnswerFacts | None = None
