"""Ratings in a SQLite file next to one app server: the embedded default, migrated by the app.

One connection behind a lock: SQLite serialises writers anyway, and the API's threadpool and
Gradio's worker threads must not trip over each other. The schema is versioned
(``schema_version``); a file written by an older release is migrated in place on open.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ivig_qa.feedback.issued import IssuedAnswers
from ivig_qa.feedback.store import COLUMNS, FeedbackStore, FeedbackUnavailableError, is_database_url

BUSY_TIMEOUT_S = 2.0  # a writer waits this long for another to finish, then the API answers 503

# Version 1 is the table of the first release (created if missing, kept if present);
# version 2 adds what the server knew about the rated answer.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS feedback (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                answer_id  TEXT NOT NULL,
                rating     TEXT NOT NULL CHECK (rating IN ('up', 'down')),
                comment    TEXT,
                question   TEXT,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id)",
        ],
    ),
    (
        2,
        [
            "ALTER TABLE feedback ADD COLUMN status TEXT",
            "ALTER TABLE feedback ADD COLUMN reasons TEXT",
            "ALTER TABLE feedback ADD COLUMN cited TEXT",
            "ALTER TABLE feedback ADD COLUMN index_version TEXT",
            "ALTER TABLE feedback ADD COLUMN engine TEXT",
            "CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created_at)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SQLiteFeedbackStore(FeedbackStore):
    """The feedback table in one SQLite file (WAL mode), thread-safe."""

    @classmethod
    def handles(cls, location: str | Path) -> bool:
        return not is_database_url(location)

    def __init__(
        self, location: str | Path, *, store_questions: bool = False, issued: IssuedAnswers | None = None
    ) -> None:
        super().__init__(location, store_questions=store_questions, issued=issued)
        self.path = Path(location)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            migrate(self._conn)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:  # locked by another writer, disk full, file gone…
            raise FeedbackUnavailableError(f"the feedback file {self.path} is unavailable ({exc})") from exc

    def _insert(self, row: Sequence[Any]) -> int:
        marks = ", ".join("?" for _ in COLUMNS)
        cursor = self._run(f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({marks})", row)
        return int(cursor.lastrowid or 0)

    def _select(self, since: datetime | None, limit: int | None) -> list[Sequence[Any]]:
        sql = f"SELECT id, {', '.join(COLUMNS)} FROM feedback"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE created_at >= ?"
            params.append(_stamp(since))
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _delete_before(self, cutoff: datetime) -> int:
        return self._run("DELETE FROM feedback WHERE created_at < ?", (_stamp(cutoff),)).rowcount

    def count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _stamp(when: datetime) -> str:
    """The stored form of a time (UTC ISO 8601 with microseconds: text order is time order)."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file's schema to ``SCHEMA_VERSION`` in one transaction; returns the version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, _stamp(datetime.now(UTC))),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
