"""Faults: a build killed with SIGKILL, a damaged index folder, a dead or hung Chroma server, and a
burst of 10,000 requests.

Each fault is produced for real (a process killed by its PID, bytes overwritten on disk, the
Chroma server frozen and killed, a flood of loopback requests) and the test checks what a
patient or an operator would see: a clear message or a JSON error — never a traceback or a
hang — and recovery without a restart.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.bench.corpora import scale_corpus
from ivig_qa.cli import app
from ivig_qa.feedback import AnswerIds
from ivig_qa.index import IndexStore
from ivig_qa.settings import Settings
from ivig_qa.testing import (
    SMALL_DOCS,
    BackgroundServer,
    ChromaServer,
    kill_index_build_at,
    settings_env,
    small_corpus,
    wait_until,
)
from ivig_qa.types import Status
from ivig_qa.web.app import create_app

QUESTION = "How soon do infantile spasms respond to IVIG?"


def collection_versions(settings: Settings) -> set[str]:
    """Index versions with collections in the folder (read by a fresh client)."""
    SharedSystemClient.clear_system_cache()
    store = IndexStore(settings)
    return {v for c in store.client.list_collections() if (v := store._owned_version(c.name))}


# --- kill -9 during a build ---------------------------------------------------------------------------
def test_kill_9_during_a_build_leaves_the_previous_index_answering(corpus_dir: Path, tmp_path: Path) -> None:
    small = Settings.load(
        corpus_dir=small_corpus(corpus_dir, tmp_path / "small"), index_dir=tmp_path / "index"
    )
    IndexStore(small).build()
    before = IndexStore(small).manifest()
    SharedSystemClient.clear_system_cache()  # the build below runs in another process

    # A bigger corpus (the two documents plus ~120 chunks of varied copies), built by
    # `ivig-qa index` in small groups so it is killed with most of the work still to do.
    big_dir = tmp_path / "big"
    scale_corpus(small.index.corpus_dir, big_dir, 120, small)
    for path in small.index.corpus_dir.glob("*.txt"):
        shutil.copy(path, big_dir)
    with (big_dir / "sources.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + (small.index.corpus_dir / "sources.toml").read_text("utf-8"))
    big = small.updated(**{"corpus_dir": big_dir, "embedding_group_chunks": 16})

    kill_index_build_at(big, r"embedded 16/\d+ chunks")

    # The killed build left collections behind, but the manifest still names the old version.
    assert collection_versions(small) - {before.version}, "the build was killed before it wrote anything"
    SharedSystemClient.clear_system_cache()
    assert IndexStore(small).manifest().version == before.version
    old = Assistant.load(small, build=False).ask(QUESTION)
    assert old.status == Status.ANSWERED and old.citations

    summary = IndexStore(big).build()
    assert summary.rebuilt and summary.chunks >= 120
    assert sorted(summary.reused_documents) == sorted(SMALL_DOCS)
    after = IndexStore(big).manifest()
    assert after.version != before.version
    assert collection_versions(big) == {after.version}  # the killed build's leftovers are gone
    SharedSystemClient.clear_system_cache()
    assert Assistant.load(big, build=False).ask(QUESTION).status == Status.ANSWERED


# --- a damaged index folder -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_index(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("damaged")
    settings = Settings.load(corpus_dir=small_corpus(corpus_dir, root / "corpus"), index_dir=root / "index")
    IndexStore(settings).build()
    SharedSystemClient.clear_system_cache()
    return settings


def write_garbage(settings: Settings) -> None:
    (settings.index.index_dir / "chroma.sqlite3").write_bytes(b"this is not a database" * 200)


def cut_in_half(settings: Settings) -> None:
    """A half-written database file, as a full disk or a copy interrupted midway leaves it."""
    path = settings.index.index_dir / "chroma.sqlite3"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_active_version(settings: Settings) -> None:
    """The manifest names a version whose chunks are missing."""
    store = IndexStore(settings)
    store.client.delete_collection(store._name("chunks", store.manifest().version))
    SharedSystemClient.clear_system_cache()


DAMAGE = {"garbage": write_garbage, "half-written": cut_in_half, "version missing": drop_active_version}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_index_gives_a_clear_message_and_rebuild_fixes_it(
    built_index: Settings, tmp_path: Path, damage: str
) -> None:
    settings = built_index.updated(**{"index_dir": tmp_path / "index"})
    shutil.copytree(built_index.index.index_dir, settings.index.index_dir)
    DAMAGE[damage](settings)
    env = settings_env(settings)
    runner = CliRunner()

    asked = runner.invoke(app, ["ask", QUESTION], env=env)
    text = " ".join(asked.output.split())
    assert asked.exit_code == 1, asked.output
    assert isinstance(asked.exception, SystemExit)  # a clean exit, not a crash
    assert "Traceback" not in asked.output and "error:" in text
    assert "ivig-qa index --rebuild" in text

    rebuilt = runner.invoke(app, ["index", "--rebuild"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    again = runner.invoke(app, ["ask", QUESTION, "--json"], env=env)
    assert again.exit_code == 0, again.output
    assert '"status": "answered"' in again.output


# --- the Chroma server goes down (hung, then dead) and comes back -------------------------------------
def test_a_dead_or_hung_chroma_server_fails_fast_and_recovers_by_itself(
    corpus_dir: Path, tmp_path: Path
) -> None:
    with ChromaServer(tmp_path / "chroma") as chroma, httpx.Client(timeout=30) as client:
        settings = Settings.load(
            corpus_dir=small_corpus(corpus_dir, tmp_path / "corpus"),
            index_dir=tmp_path / "no-local-index",
            chroma_url=chroma.url,
            collection_prefix=f"f{uuid.uuid4().hex[:10]}",
            feedback_db=tmp_path / "feedback.sqlite3",
            chroma_timeout_s=1.0,
            chroma_poll_s=0.5,
            rate_limit_per_minute=0,
            chat_ui=False,
        )
        IndexStore(settings).build()
        with BackgroundServer(create_app(settings), settings) as url:
            assert client.get(f"{url}/api/health").status_code == 200
            assert client.post(f"{url}/api/ask", json={"question": QUESTION}).status_code == 200

            chroma.pause()  # hung: accepts connections, never answers
            assert_fails_fast(client, url, within_s=5)
            assert_health_down(client, url)

            chroma.resume()
            chroma.stop()  # dead: connection refused
            assert_fails_fast(client, url, within_s=2)
            assert_health_down(client, url)
            failed = CliRunner().invoke(app, ["index"], env=settings_env(settings))
            assert failed.exit_code == 1 and "unreachable" in failed.output
            assert "Traceback" not in failed.output

            # An app server started while the Chroma server is down waits for it.
            late = BackgroundServer(create_app(settings), settings, wait_ready=False)
            late_url = late.start()
            try:
                assert client.get(f"{late_url}/api/health").status_code == 503

                chroma.start()  # same port, same folder
                for app_url in (url, late_url):
                    wait_until(
                        lambda u=app_url: client.get(f"{u}/api/health").status_code == 200, 30, "health"
                    )
                    r = client.post(f"{app_url}/api/ask", json={"question": QUESTION})
                    assert r.status_code == 200, r.text
                    assert r.json()["status"] == "answered" and r.json()["citations"]
            finally:
                late.stop()


def assert_fails_fast(client: httpx.Client, url: str, within_s: float) -> None:
    """An answer while the index server is down: a JSON 503 in seconds, not a hang or a 500."""
    started = time.monotonic()
    r = client.post(f"{url}/api/ask", json={"question": QUESTION})
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "index_unavailable" and "try again" in body["message"]
    assert r.headers["retry-after"] and "Traceback" not in r.text
    assert elapsed < within_s, f"took {elapsed:.1f} s"


def assert_health_down(client: httpx.Client, url: str) -> None:
    def down() -> bool:
        r = client.get(f"{url}/api/health")
        return r.status_code == 503 and "unreachable" in (r.json()["error"] or "")

    wait_until(down, 10, "health reporting the index down")


# --- a burst of 10,000 requests -----------------------------------------------------------------------
BURST = 10_000
FEEDBACK_SHARE = 5  # every 5th request of the burst is a rating


async def fire(url: str, requests: list[tuple[str, dict]], concurrency: int) -> list[httpx.Response]:
    """Send every request with ``concurrency`` in flight (bounded: the list is the whole load)."""
    queue = iter(enumerate(requests))
    responses: list[httpx.Response | None] = [None] * len(requests)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for i, (path, body) in queue:
                responses[i] = await client.post(path, json=body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in responses if r is not None]


BURST_SECRET = "burst-test-secret"
# The client shares the server's process (and GIL) here: on 2 busy cores a kept-alive connection can
# sit past the 5 s default between two requests, and the server closing it as the next request
# leaves is the ordinary keep-alive race (a ReadError), not a lost request. The burst servers keep
# idle connections longer so the test measures what it is for: nothing accepted is lost.
BURST_KEEP_ALIVE_S = 60.0
SIGNER = AnswerIds(BURST_SECRET)  # the servers below sign answer ids with the same secret


def feedback(answer_id: str) -> tuple[str, dict]:
    """A rating for ``answer_id``, signed as the server signs the ids it hands out."""
    return "/api/feedback", {"answer_id": SIGNER.sign(answer_id), "rating": "up", "comment": "burst"}


def stored_answer_ids(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        return Counter(row[0] for row in conn.execute("SELECT answer_id FROM feedback"))


@pytest.fixture
def burst_server(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "feedback.sqlite3"
    settings = session_settings.updated(
        **{
            "feedback_db": db,
            "rate_limit_per_minute": 30,
            "chat_ui": False,
            "answer_id_secret": BURST_SECRET,
            "keep_alive_s": BURST_KEEP_ALIVE_S,
        }
    )
    with BackgroundServer(create_app(settings, assistant=assistant), settings) as url:
        yield url, db


def test_a_burst_of_10000_requests_loses_nothing(
    burst_server: tuple[str, Path], assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    url, db = burst_server
    questions = ["How often is IVIG given?", "What are the side effects of IVIG?", "Is IVIG used for lupus?"]
    requests = [
        feedback(f"burst-{i}") if i % FEEDBACK_SHARE == 0 else ("/api/ask", {"question": questions[i % 3]})
        for i in range(BURST)
    ]
    responses = asyncio.run(fire(url, requests, concurrency=64))
    assert len(responses) == BURST
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 201, 429}, statuses  # nothing but answers, ratings and deliberate 429s
    assert statuses[429] > 0 and statuses[200] > 0
    for (path, sent), r in zip(requests, responses, strict=True):
        if r.status_code == 429:
            assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        elif path == "/api/ask":
            assert r.json()["disclaimer"] and r.json()["question"] == sent["question"]
    pairs = zip(requests, responses, strict=True)
    accepted = Counter(
        sent["answer_id"] for (path, sent), r in pairs if path == "/api/feedback" and r.status_code == 201
    )
    assert stored_answer_ids(db) == accepted  # every accepted rating stored, exactly once

    # Without a rate limit every one of 1,000 concurrent ratings must land.
    free_db = tmp_path / "free.sqlite3"
    free = session_settings.updated(
        **{
            "feedback_db": free_db,
            "rate_limit_per_minute": 0,
            "chat_ui": False,
            "answer_id_secret": BURST_SECRET,
            "keep_alive_s": BURST_KEEP_ALIVE_S,
        }
    )
    with BackgroundServer(create_app(free, assistant=assistant), free) as free_url:
        ratings = [feedback(f"free-{i}") for i in range(1_000)]
        got = asyncio.run(fire(free_url, ratings, concurrency=64))
    assert Counter(r.status_code for r in got) == {201: 1_000}
    assert stored_answer_ids(free_db) == Counter(body["answer_id"] for _, body in ratings)
