"""The API's request and response models (pydantic), as the OpenAPI docs show them."""

# No ``from __future__ import annotations`` here: the request models are built per app
# (their limits come from Settings) and FastAPI must see the real classes in signatures.

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ivig_qa import __version__
from ivig_qa.feedback import Rating
from ivig_qa.policy.input import InputLimits, check_history, clean_question
from ivig_qa.settings import Settings
from ivig_qa.types import Message, SourceDocument


class FieldError(BaseModel):
    field: str = Field(description="Where in the request, e.g. `history[2].role`.")
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns, 4xx or 5xx: never a traceback."""

    error: str = Field(description="A stable code, e.g. `invalid_request`, `rate_limited`.")
    message: str = Field(description="A sentence a person can read.")
    request_id: str
    details: list[FieldError] = Field(default_factory=list)


class RateLimitHealth(BaseModel):
    """Where the rate limits live: ``shared`` is false while a configured Redis is unreachable."""

    backend: Literal["local", "redis"]
    shared: bool
    error: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ready", "loading", "error"]
    ready: bool
    documents: int = 0
    chunks: int = 0
    engine: str
    version: str = __version__
    index_version: str | None = None
    error: str | None = None
    problems: list[str] = Field(
        default_factory=list, description="Corpus files the active index left out, and why (by name)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the build noticed but could use (unlisted files, pages without text).",
    )
    rate_limit: RateLimitHealth | None = None


class ClientConfig(BaseModel):
    """What the widget needs before the first question (title, disclaimer, limits)."""

    title: str
    disclaimer: str
    examples: list[str]
    max_question_chars: int
    max_history_turns: int
    version: str = __version__


class SourcePassage(BaseModel):
    """A content block of the source; offsets point into the source's text like citations."""

    start: int
    end: int
    heading: str
    text: str
    page: int | None = Field(None, description="The PDF page the block starts on.")


class SourceView(BaseModel):
    doc_id: str
    title: str
    metadata: dict[str, Any]
    text: str = Field(description="The cleaned text (page furniture removed).")
    passages: list[SourcePassage]
    file_name: str = Field(description="The original file, served at /files/{doc_id}.")
    media_type: str
    pages: list[tuple[int, int]] = Field(
        default_factory=list, description="(offset, page) where each PDF page's text starts."
    )

    @classmethod
    def of(cls, doc: SourceDocument) -> "SourceView":
        passages = [
            SourcePassage(
                start=b.span.start,
                end=b.span.end,
                heading=b.heading,
                text=doc.text[b.span.start : b.span.end],
                page=doc.page_at(b.span.start),
            )
            for b in doc.blocks
        ]
        return cls(
            doc_id=doc.doc_id,
            title=doc.title,
            metadata=doc.metadata,
            text=doc.cleaned_text(),
            passages=passages,
            file_name=Path(doc.path).name,
            media_type=doc.media_type,
            pages=list(doc.pages),
        )


class FeedbackAck(BaseModel):
    id: int
    answer_id: str
    rating: Rating
    question_stored: bool


def request_models(settings: Settings) -> type[BaseModel]:
    """The ask request schema, with the operator's limits shown in the OpenAPI docs.

    The schema checks the shape (types, roles, no other fields); the limits themselves are
    the domain's one input rule (``policy.input``), applied by ``checked``, so the API,
    the chat and the Python API refuse exactly the same messages.
    """
    limits = input_limits(settings)

    class HistoryTurn(BaseModel):
        """One earlier message of the conversation."""

        model_config = ConfigDict(extra="forbid")
        role: Literal["user", "assistant"]
        content: str = Field(json_schema_extra={"maxLength": limits.max_history_message_chars})

    class AskRequest(BaseModel):
        """A question and the conversation so far (oldest first)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"question": "How often is IVIG given?", "history": []}]},
        )
        question: str = Field(json_schema_extra={"minLength": 1, "maxLength": limits.max_question_chars})
        history: list[HistoryTurn] = Field(
            default_factory=list, json_schema_extra={"maxItems": limits.max_history_turns}
        )

        def checked(self) -> tuple[str, list[Message]]:
            """The cleaned question and the turns, or ``InvalidQuestion`` naming the field."""
            question = clean_question(self.question, limits.max_question_chars)
            turns = [Message(role=t.role, content=t.content) for t in self.history]
            return question, check_history(turns, limits)

    return AskRequest


def input_limits(settings: Settings) -> InputLimits:
    p = settings.policy
    return InputLimits(p.max_question_chars, p.max_history_turns, p.max_history_message_chars)
