"""Scale-out state: feedback in one PostgreSQL and rate limits in one Redis for several app servers.

The tests start their own PostgreSQL (``initdb`` + ``pg_ctl`` from Debian's ``postgresql``) and
Redis (``redis-server``) on free loopback ports in temp folders, and two app servers on them.
They stop and restart each service while the app servers are in use. They are skipped, with
the reason, only where the binaries are not installed (``make test`` installs them).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.cli import app
from ivig_qa.feedback import FeedbackStore
from ivig_qa.settings import Settings
from ivig_qa.testing import (
    BackgroundServer,
    PostgresServer,
    RedisServer,
    postgres_missing,
    redis_missing,
    settings_env,
    wait_until,
)
from ivig_qa.web.app import create_app

QUESTIONS = ("How often is IVIG given?", "Is IVIG used for lupus?", "What are the side effects of IVIG?")


def app_servers(settings: Settings, assistant: Assistant, n: int, stack: ExitStack) -> list[str]:
    """``n`` app servers, each with its own state (limiter, feedback store), on the same services."""
    return [
        stack.enter_context(BackgroundServer(create_app(settings, assistant=assistant), settings))
        for _ in range(n)
    ]


# --- feedback in PostgreSQL ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


def test_servers_starting_together_create_the_schema_once(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"race_{uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: FeedbackStore(url), range(6)))
    for store in stores:
        store.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


def test_two_app_servers_share_one_feedback_database_through_an_outage(
    postgres: PostgresServer, assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    url = postgres.create_database(f"fb_{uuid.uuid4().hex[:8]}")
    settings = session_settings.updated(
        feedback_url=url,
        feedback_db=tmp_path / "unused.sqlite3",  # never written: the database is configured
        rate_limit_per_minute=0,
        chat_ui=False,
        answer_id_secret="scale-out-shared-secret",  # one secret behind one balancer
    )
    with ExitStack() as stack, httpx.Client(timeout=60) as client:
        servers = app_servers(settings, assistant, 2, stack)
        # Each server rates an answer it gave; one rating reaches the other server.
        answers = [
            client.post(f"{u}/api/ask", json={"question": q}).json()
            for u, q in zip(servers, QUESTIONS[:2], strict=True)
        ]
        for u, a in zip(servers, answers, strict=True):
            r = client.post(f"{u}/api/feedback", json={"answer_id": a["answer_id"], "rating": "down"})
            assert r.status_code == 201, r.text
        crossed = client.post(
            f"{servers[1]}/api/feedback", json={"answer_id": answers[0]["answer_id"], "rating": "up"}
        )
        assert crossed.status_code == 201

        report = json.loads(run_report(settings))
        assert report["ratings"] == 3 and report["location"] == url
        rows = {(r["answer_id"], r["status"]) for r in report["down_rated"]}
        assert rows == {(a["answer_id"], a["status"]) for a in answers}  # facts from the server that answered
        assert not (tmp_path / "unused.sqlite3").exists()

        # Ratings keep coming through both servers while the database stops and comes back.
        acked: list[int] = []
        refused: list[httpx.Response] = []
        stop = threading.Event()

        def rate_forever() -> None:
            i = 0
            while not stop.is_set():
                server, answer = servers[i % 2], answers[i % 2]
                i += 1
                body = {"answer_id": answer["answer_id"], "rating": "up", "comment": f"n{i}"}
                r = client.post(f"{server}/api/feedback", json=body)
                if r.status_code == 201:
                    acked.append(r.json()["id"])
                else:
                    refused.append(r)
                time.sleep(0.05)

        rater = threading.Thread(target=rate_forever)
        rater.start()
        try:
            wait_until(lambda: len(acked) >= 4, 30, "ratings before the outage")
            postgres.stop()
            wait_until(lambda: len(refused) >= 2, 60, "ratings refused during the outage")
            for u in servers:  # answering does not depend on the feedback database
                assert client.get(f"{u}/api/health").status_code == 200
                assert client.post(f"{u}/api/ask", json={"question": QUESTIONS[0]}).status_code == 200
            postgres.start()
            back = len(acked)
            wait_until(lambda: len(acked) >= back + 4, 90, "ratings accepted again after the restart")
        finally:
            stop.set()
            rater.join(timeout=60)
    for r in refused:
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert r.json()["error"] == "busy" and "try again" in r.json()["message"]
    with psycopg.connect(url) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM feedback")}
    assert set(acked) <= stored  # nothing acknowledged was lost
    assert len(acked) == len(set(acked))
    assert json.loads(run_report(settings))["ratings"] == len(stored)


def run_report(settings: Settings) -> str:
    result = CliRunner().invoke(app, ["feedback", "--json"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    return result.output


# --- rate limits in Redis ----------------------------------------------------------------------------------
@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    reason = redis_missing()
    if reason:
        pytest.skip(reason)
    with RedisServer() as server:
        yield server


LIMIT = 10  # per minute


def alternate(client: httpx.Client, servers: list[str], count: int) -> list[int]:
    return [
        client.post(f"{servers[i % 2]}/api/ask", json={"question": QUESTIONS[i % 3]}).status_code
        for i in range(count)
    ]


def test_two_app_servers_share_one_rate_limit_and_fall_back_when_redis_stops(
    redis_server: RedisServer, assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(
        feedback_db=tmp_path / "feedback.sqlite3",
        rate_limit_per_minute=LIMIT,
        rate_limit_url=redis_server.url,
        chat_ui=False,
    )
    with ExitStack() as stack, httpx.Client(timeout=60) as client:
        servers = app_servers(settings, assistant, 2, stack)
        statuses = alternate(client, servers, 2 * LIMIT)
        assert set(statuses) <= {200, 429}
        # One bucket for the client whichever server it reaches: about LIMIT of 2×LIMIT refused
        # (a token or so refills while they are sent). Separate buckets would refuse none.
        assert LIMIT - 2 <= statuses.count(429) <= LIMIT, statuses
        for u in servers:
            health = client.get(f"{u}/api/health").json()
            assert health["rate_limit"] == {"backend": "redis", "shared": True, "error": None}

        redis_server.stop()
        # Still answered, now under each server's own bucket (full: LIMIT each).
        down = alternate(client, servers, 2 * LIMIT)
        assert down == [200] * (2 * LIMIT), down
        assert client.post(f"{servers[0]}/api/ask", json={"question": QUESTIONS[0]}).status_code == 429
        for u in servers:
            health = client.get(f"{u}/api/health")
            assert health.status_code == 200
            limits = health.json()["rate_limit"]
            assert limits["backend"] == "redis" and limits["shared"] is False
            assert "unreachable" in limits["error"] and "per server" in limits["error"]

        redis_server.start()  # an empty Redis on the same port: shared again once retried

        def shared_again(url: str) -> bool:
            client.post(f"{url}/api/ask", json={"question": QUESTIONS[1]})
            return client.get(f"{url}/api/health").json()["rate_limit"]["shared"] is True

        for u in servers:
            wait_until(lambda u=u: shared_again(u), 30, "rate limits shared again")
