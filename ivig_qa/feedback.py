"""Thumbs up/down on answers, kept in a small SQLite file the operator owns.

Only what is needed to judge answers is stored: the answer id, the rating, an optional
comment and the time. The question text is stored only when the operator has switched
on ``log_questions``; otherwise it is dropped before it reaches the database. Ratings
through the API carry the answer id the server handed out, signed (``AnswerIds``), so only
answers it actually gave can be rated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ivig_qa.policy.input import unreadable

Rating = Literal["up", "down"]
BUSY_TIMEOUT_S = 2.0  # a write waits this long for another writer's lock, then FeedbackBusy

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


class FeedbackBusy(RuntimeError):
    """The database is locked by another writer for longer than ``BUSY_TIMEOUT_S``."""


class _Rating(BaseModel):
    answer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    rating: Rating
    comment: str | None = Field(None, max_length=2000)
    question: str | None = Field(None, max_length=8000, description="Stored only when log_questions is on.")


class FeedbackIn(_Rating):
    """A rating as a client sends it (the HTTP API validates requests against this):
    no other fields, and no control characters (the domain's rule for text, ``unreadable``)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("comment", "question")
    @classmethod
    def _readable(cls, text: str | None) -> str | None:
        if text is not None and unreadable(text):
            raise ValueError("contains characters that are not readable text (binary or control characters)")
        return text


class FeedbackRecord(_Rating):
    """A stored rating."""

    id: int
    created_at: datetime


class AnswerIds:
    """Answer ids as handed to clients: ``<id>-<mac>``, an HMAC of the id with a secret.

    ``verify`` gives back the plain id only for ids this server (or one with the same
    secret) signed, so feedback cannot be filed for answers that were never given. The
    default secret is random per process; servers behind one load balancer share one.
    """

    MAC_CHARS = 20

    def __init__(self, secret: str | None = None) -> None:
        self._key = (secret or secrets.token_hex(32)).encode()

    def _mac(self, answer_id: str) -> str:
        return hmac.new(self._key, answer_id.encode(), hashlib.sha256).hexdigest()[: self.MAC_CHARS]

    def sign(self, answer_id: str) -> str:
        return f"{answer_id}-{self._mac(answer_id)}"

    def verify(self, signed: str) -> str | None:
        """The plain answer id of a signed one, or None when the signature does not match."""
        answer_id, _, mac = signed.rpartition("-")
        if not answer_id or not re.fullmatch(r"[0-9a-f]+", mac):
            return None
        return answer_id if hmac.compare_digest(mac, self._mac(answer_id)) else None


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
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    def add(self, feedback: FeedbackIn) -> FeedbackRecord:
        """Store one rating; the question is dropped unless the operator opted in.

        ``FeedbackBusy`` when another writer holds the database past the busy timeout.
        """
        question = feedback.question if self.store_questions else None
        comment = (feedback.comment or "").strip() or None
        created = datetime.now(UTC)
        try:
            with self._lock:
                cursor = self._conn.execute(
                    "INSERT INTO feedback (answer_id, rating, comment, question, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (feedback.answer_id, feedback.rating, comment, question, created.isoformat()),
                )
                row_id = int(cursor.lastrowid or 0)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise FeedbackBusy(str(exc)) from exc
            raise
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
