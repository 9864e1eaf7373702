"""The one feedback storage interface: add, read, purge and close, with the same rows in every backend.

A backend (``sqlite.py``: a file per server, the embedded default; ``postgres.py``: one
database for every app server) provides the SQL; this module keeps what they share: the
privacy rule (the question is stored only when ``log_questions`` is on), the answer facts
attached from ``IssuedAnswers``, the row format, and ``FeedbackUnavailableError`` — the
one failure the API turns into 503 + ``Retry-After``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from ivig_qa.feedback.issued import IssuedAnswers
from ivig_qa.feedback.models import AnswerFacts, CitedSource, FeedbackIn, FeedbackRecord
from ivig_qa.settings import Settings

# The columns every backend stores, in this order (``_insert`` and ``_select`` use it).
COLUMNS = (
    "answer_id",
    "rating",
    "comment",
    "question",
    "created_at",
    "status",
    "reasons",
    "cited",
    "index_version",
    "engine",
)


class FeedbackUnavailableError(RuntimeError):
    """The feedback database cannot take or give ratings now (down, locked, unreachable)."""


class FeedbackStore(ABC):
    """Ratings in a database, whichever one: the API, the chat and ``ivig-qa feedback`` use only this.

    ``FeedbackStore(location)`` opens the backend that handles the location (each backend
    registers itself by subclassing), so callers that only know a path keep working.
    """

    location: str
    _backends: ClassVar[list[type[FeedbackStore]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FeedbackStore._backends.append(cls)

    def __new__(cls, location: str | Path, *args: Any, **kwargs: Any) -> FeedbackStore:
        if cls is FeedbackStore:
            found = [b for b in FeedbackStore._backends if b.handles(location)]
            if not found:
                raise ValueError(f"no feedback backend for {location!r}")
            cls = found[0]
        return super().__new__(cls)

    @classmethod
    def handles(cls, location: str | Path) -> bool:
        """True when this backend stores ratings at ``location``."""
        return False

    def __init__(
        self, location: str | Path, *, store_questions: bool = False, issued: IssuedAnswers | None = None
    ) -> None:
        self.store_questions = store_questions
        self.issued = issued if issued is not None else IssuedAnswers()

    # -- what callers use ------------------------------------------------------------------------
    def add(self, feedback: FeedbackIn) -> FeedbackRecord:
        """Store one rating with its answer's facts; the question is dropped unless the operator opted in.

        Returns once the row is committed; ``FeedbackUnavailableError`` when it could not be.
        """
        facts = self.issued.get(feedback.answer_id)
        record = FeedbackRecord(
            id=0,
            answer_id=feedback.answer_id,
            rating=feedback.rating,
            comment=(feedback.comment or "").strip() or None,
            question=feedback.question if self.store_questions else None,
            created_at=datetime.now(UTC),
            facts=facts,
        )
        record.id = self._insert(to_row(record))
        return record

    def ratings(self, since: datetime | None = None, limit: int | None = None) -> list[FeedbackRecord]:
        """Ratings newest first, optionally only those made at or after ``since``."""
        return [from_row(row) for row in self._select(since, limit)]

    def recent(self, limit: int = 100) -> list[FeedbackRecord]:
        """The newest ratings first (for an operator's review)."""
        return self.ratings(limit=limit)

    def purge(self, older_than_days: float) -> int:
        """Delete ratings older than this many days; returns how many went."""
        return self._delete_before(datetime.now(UTC) - timedelta(days=older_than_days))

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def close(self) -> None:
        """Release the connection(s); the store cannot be used afterwards."""

    # -- what a backend provides ------------------------------------------------------------------
    @abstractmethod
    def _insert(self, row: Sequence[Any]) -> int:
        """Insert one row (values in ``COLUMNS`` order) and commit; return its id."""

    @abstractmethod
    def _select(self, since: datetime | None, limit: int | None) -> list[Sequence[Any]]:
        """Rows as ``(id, *COLUMNS)``, newest first."""

    @abstractmethod
    def _delete_before(self, cutoff: datetime) -> int: ...


def to_row(record: FeedbackRecord) -> tuple[Any, ...]:
    facts = record.facts
    return (
        record.answer_id,
        record.rating,
        record.comment,
        record.question,
        record.created_at.isoformat(timespec="microseconds"),
        facts.status if facts else None,
        json.dumps(facts.reasons) if facts else None,
        json.dumps([c.model_dump() for c in facts.cited]) if facts else None,
        facts.index_version if facts else None,
        facts.engine if facts else None,
    )


def from_row(row: Sequence[Any]) -> FeedbackRecord:
    values = dict(zip(("id", *COLUMNS), row, strict=True))
    created = values["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    facts = None
    if values["status"] is not None:
        facts = AnswerFacts(
            status=values["status"],
            reasons=json.loads(values["reasons"] or "[]"),
            cited=[CitedSource(**c) for c in json.loads(values["cited"] or "[]")],
            index_version=values["index_version"],
            engine=values["engine"] or "",
        )
    return FeedbackRecord(
        id=int(values["id"]),
        answer_id=values["answer_id"],
        rating=values["rating"],
        comment=values["comment"],
        question=values["question"],
        created_at=created,
        facts=facts,
    )


def feedback_location(settings: Settings) -> str | Path:
    """``feedback_url`` when set (PostgreSQL, shared by every app server), else the SQLite file."""
    return settings.server.feedback_url or settings.server.feedback_db


def is_database_url(location: str | Path) -> bool:
    """True for a database server's URL (not a local file)."""
    return "://" in str(location)


def open_store(settings: Settings, issued: IssuedAnswers | None = None) -> FeedbackStore:
    """The feedback store the settings name, with questions stored only when ``log_questions`` is on."""
    return FeedbackStore(
        feedback_location(settings), store_questions=settings.server.log_questions, issued=issued
    )
