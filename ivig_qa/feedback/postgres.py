"""Ratings in PostgreSQL, one database for every app server (``feedback_url = "postgresql://…"``).

psycopg 3 with a ``psycopg_pool`` connection pool: each connection is checked before use, so
one killed by a database restart is replaced instead of failing a rating. The schema is
created and migrated by the app (``schema_version``), under an advisory lock so servers
starting together do not race. While the database is down, ``add`` fails within
``POOL_TIMEOUT_S`` with ``FeedbackUnavailableError`` (the API's 503 + ``Retry-After``); the
pool reconnects by itself when it is back, and the schema is checked again then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivig_qa.feedback.issued import IssuedAnswers
from ivig_qa.feedback.store import COLUMNS, FeedbackStore, FeedbackUnavailableError
from ivig_qa.settings import redacted_url

if TYPE_CHECKING:  # psycopg is imported only when PostgreSQL is configured (~0.3 s)
    import psycopg

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 3.0  # a rating waits at most this long for a connection
CONNECT_TIMEOUT_S = 3
POOL_MAX = 4
_MIGRATION_LOCK = 0x1F1C_0A11  # pg_advisory_xact_lock key: one migrating server at a time

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS feedback (
                id            BIGSERIAL PRIMARY KEY,
                answer_id     TEXT NOT NULL,
                rating        TEXT NOT NULL CHECK (rating IN ('up', 'down')),
                comment       TEXT,
                question      TEXT,
                created_at    TIMESTAMPTZ NOT NULL,
                status        TEXT,
                reasons       TEXT,
                cited         TEXT,
                index_version TEXT,
                engine        TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id)",
            "CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created_at)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class PostgresFeedbackStore(FeedbackStore):
    """The feedback table in a PostgreSQL database shared by every app server."""

    @classmethod
    def handles(cls, location: str | Path) -> bool:
        return str(location).startswith(("postgresql://", "postgres://"))

    def __init__(
        self, location: str | Path, *, store_questions: bool = False, issued: IssuedAnswers | None = None
    ) -> None:
        from psycopg_pool import ConnectionPool

        super().__init__(location, store_questions=store_questions, issued=issued)
        self.url = str(location)
        self.location = redacted_url(self.url)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self.pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection,
            name="ivig-qa-feedback",
            open=False,
        )
        self.pool.open(wait=False)  # the server starts even while the database is down
        try:
            self._ensure_schema()
        except FeedbackUnavailableError as exc:
            log.warning("%s; ratings get 503 until it answers", exc)

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock, self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            migrate(conn)
            self._schema_ready = True

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; its failures become ``FeedbackUnavailableError`` (no password in it)."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._schema_ready = False  # a restarted or replaced database: check it again
            raise FeedbackUnavailableError(
                f"the feedback database {self.location} is unavailable ({type(exc).__name__})"
            ) from exc

    def _insert(self, row: Sequence[Any]) -> int:
        self._ensure_schema()
        marks = ", ".join("%s" for _ in COLUMNS)
        with self._connection() as conn:
            got = conn.execute(
                f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({marks}) RETURNING id", row
            ).fetchone()
        return int(got[0]) if got else 0

    def _select(self, since: datetime | None, limit: int | None) -> list[Sequence[Any]]:
        sql = f"SELECT id, {', '.join(COLUMNS)} FROM feedback"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE created_at >= %s"
            params.append(since)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        self._ensure_schema()
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _delete_before(self, cutoff: datetime) -> int:
        self._ensure_schema()
        with self._connection() as conn:
            return conn.execute("DELETE FROM feedback WHERE created_at < %s", (cutoff,)).rowcount

    def count(self) -> int:
        self._ensure_schema()
        with self._connection() as conn:
            got = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return int(got[0]) if got else 0

    def close(self) -> None:
        self.pool.close()


def migrate(conn: psycopg.Connection) -> int:
    """Apply the migrations this database lacks (call inside a transaction holding the lock)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
    )
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    current = int(row[0]) if row else 0
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, now())", (version,))
    return SCHEMA_VERSION
