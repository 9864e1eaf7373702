"""Thumbs up/down on answers, kept in a small SQLite file the operator owns.

Only what is needed to judge answers is stored: the answer id, the rating, an optional
comment and the time. The question text is stored only when the operator has switched
on ``log_questions``; otherwise it is dropped before it reaches the database.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Rating = Literal["up", "down"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id  TEXT NOT NULL,
    rating     TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment    TEXT,
    question   TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id);
"""


class FeedbackIn(BaseModel):
    """A rating as a client sends it (the HTTP API validates requests against this)."""

    answer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    rating: Rating
    comment: str | None = Field(None, max_length=2000)
    question: str | None = Field(None, max_length=8000, description="Stored only when log_questions is on.")


class FeedbackRecord(FeedbackIn):
    """A stored rating."""

    id: int
    created_at: datetime


class FeedbackStore:
    """Thread-safe writer/reader of the feedback table (one connection, one lock).

    SQLite serialises writers anyway; one shared connection behind a lock keeps the
    threadpool of the API and Gradio's worker threads from tripping over each other.
    """

    def __init__(self, path: Path, *, store_questions: bool = False) -> None:
        self.path = Path(path)
        self.store_questions = store_questions
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    def add(self, feedback: FeedbackIn) -> FeedbackRecord:
        """Store one rating; the question is dropped unless the operator opted in."""
        question = feedback.question if self.store_questions else None
        comment = (feedback.comment or "").strip() or None
        created = datetime.now(UTC)
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO feedback (answer_id, rating, comment, question, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (feedback.answer_id, feedback.rating, comment, question, created.isoformat()),
            )
            row_id = int(cursor.lastrowid or 0)
        return FeedbackRecord(
            id=row_id,
            answer_id=feedback.answer_id,
            rating=feedback.rating,
            comment=comment,
            question=question,
            created_at=created,
        )

    def recent(self, limit: int = 100) -> list[FeedbackRecord]:
        """The newest ratings first (for an operator's review)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, answer_id, rating, comment, question, created_at FROM feedback "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            FeedbackRecord(id=r[0], answer_id=r[1], rating=r[2], comment=r[3], question=r[4], created_at=r[5])
            for r in rows
        ]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
