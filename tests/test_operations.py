"""Running it for a portal, checked as an operator would: safe rebuilds, feedback review, metrics,
JSON logs and a clean shutdown.

Real processes throughout: ``ivig-qa index --rebuild`` killed with SIGKILL while an app server
keeps answering (a local folder, then a real ``chroma run`` server), ``ivig-qa feedback`` over
ratings given through HTTP, ``/metrics`` scraped from a running server, and an ``ivig-qa serve``
process sent SIGTERM in the middle of a streamed answer (the stream comes from a small
OpenAI-compatible server in this process that holds its tokens back until told).
"""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.cli import app
from ivig_qa.feedback import AnswerIds, FeedbackStore
from ivig_qa.feedback.report import parse_since
from ivig_qa.index import IndexStore
from ivig_qa.settings import Settings
from ivig_qa.testing import (
    SMALL_DOCS,
    AppServer,
    BackgroundServer,
    ChromaServer,
    kill_index_build_at,
    settings_env,
    small_corpus,
    wait_until,
)
from ivig_qa.types import Status
from ivig_qa.web.app import create_app
from ivig_qa.web.chat import ChatHandlers, ChatSession
from ivig_qa.web.limits import TokenBucketLimiter
from ivig_qa.web.metrics import engine_kind

SHARED_SECRET = "operations-test-secret"  # as every server behind one balancer would share

QUESTION = "How soon do infantile spasms respond to IVIG?"
URGENT = "My child had IVIG today and now has a stiff neck, a high fever and is very drowsy"
OFF_TOPIC = "What is the best recipe for banana bread?"
API_KEY = "ops-key-51c7"


def small_settings(corpus_dir: Path, root: Path, **changes: object) -> Settings:
    return Settings.load(
        corpus_dir=small_corpus(corpus_dir, root / "corpus"),
        index_dir=root / "index",
        feedback_db=root / "feedback.sqlite3",
        rate_limit_per_minute=0,
        chat_ui=False,
        **changes,
    )


def versions(store: IndexStore) -> set[str]:
    return {v for c in store.client.list_collections() if (v := store._owned_version(c.name))}


class Asker:
    """Asks one server the same question every 0.1 s in a thread; every non-200 is a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/api/ask", json={"question": QUESTION})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code == 200 and r.json()["status"] == "answered":
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.1)

    def __enter__(self) -> Asker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# --- 1. an atomic --rebuild -------------------------------------------------------------------------
def test_kill_9_during_a_local_rebuild_leaves_the_previous_version_answering(
    corpus_dir: Path, tmp_path: Path
) -> None:
    settings = small_settings(corpus_dir, tmp_path, embedding_group_chunks=1)
    IndexStore(settings).build()
    before = IndexStore(settings).manifest()
    with BackgroundServer(create_app(settings), settings) as url, Asker(url) as asker:
        wait_until(lambda: asker.ok >= 2, 60, "answers before the rebuild")
        kill_index_build_at(settings, r"embedded 1/\d+ chunks", "--rebuild")
        answered_before_kill = asker.ok
        wait_until(lambda: asker.ok >= answered_before_kill + 3, 60, "answers after the kill")
    assert asker.failures == []

    SharedSystemClient.clear_system_cache()  # read the folder as a fresh process would
    store = IndexStore(settings)
    assert store.manifest().version == before.version
    assert versions(store) - {before.version}, "the rebuild was killed before it wrote anything"
    assert Assistant.load(settings, build=False).ask(QUESTION).status == Status.ANSWERED

    summary = store.build(rebuild=True)  # a rebuild that finishes: everything embedded again
    assert summary.rebuilt and sorted(summary.embedded_documents) == sorted(SMALL_DOCS)
    assert summary.reused_documents == []
    after = store.manifest()
    assert after.version != before.version and versions(store) == {after.version}
    SharedSystemClient.clear_system_cache()
    assert Assistant.load(settings, build=False).ask(QUESTION).status == Status.ANSWERED


def test_kill_9_during_a_rebuild_on_a_chroma_server_keeps_every_app_server_answering(
    corpus_dir: Path, tmp_path: Path
) -> None:
    with ChromaServer(tmp_path / "chroma") as chroma:
        settings = small_settings(
            corpus_dir,
            tmp_path,
            chroma_url=chroma.url,
            collection_prefix=f"o{uuid.uuid4().hex[:10]}",
            chroma_poll_s=0.5,
            embedding_group_chunks=1,
        )
        store = IndexStore(settings)
        store.build()
        old = store.manifest().version
        with BackgroundServer(create_app(settings), settings) as url, Asker(url) as asker:
            wait_until(lambda: asker.ok >= 2, 60, "answers before the rebuild")
            kill_index_build_at(settings, r"embedded 1/\d+ chunks", "--rebuild")
            assert store.manifest().version == old  # the killed rebuild switched nothing…
            orphans = versions(store) - {old}
            assert orphans  # …though it had written part of a new version
            answered_before = asker.ok
            wait_until(lambda: asker.ok >= answered_before + 3, 60, "answers after the kill")

            summary = IndexStore(settings).build(rebuild=True)  # the rebuild that finishes
            assert summary.rebuilt and summary.reused_documents == []
            new = store.manifest().version
            wait_until(
                lambda: httpx.get(f"{url}/api/health").json().get("index_version") == new,
                60,
                "the app server switching to the rebuilt version",
            )
            answered_after_switch = asker.ok
            wait_until(lambda: asker.ok >= answered_after_switch + 2, 60, "answers after the switch")
        assert asker.failures == []
        # The replaced version stays one build longer for app servers still reading it; the
        # killed rebuild's leftovers are gone.
        assert versions(store) == {old, new} and not (orphans & versions(store))
        assert not settings.index.index_dir.exists()


# --- 2. feedback the care team can review ---------------------------------------------------------------
@pytest.fixture
def feedback_server(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, Settings]]:
    settings = session_settings.updated(
        feedback_db=tmp_path / "feedback.sqlite3",
        rate_limit_per_minute=0,
        chat_ui=False,
        answer_id_secret=SHARED_SECRET,
    )
    with BackgroundServer(create_app(settings, assistant=assistant), settings) as url:
        yield url, settings


def ask_and_rate(client: httpx.Client, url: str, question: str, rating: str, comment: str | None) -> dict:
    answer = client.post(f"{url}/api/ask", json={"question": question}).json()
    body = {"answer_id": answer["answer_id"], "rating": rating, "comment": comment, "question": question}
    assert client.post(f"{url}/api/feedback", json=body).status_code == 201
    return answer


def run_cli(settings: Settings, *args: str) -> str:
    env = {**settings_env(settings), "COLUMNS": "200"}  # rich reads the width at print time
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_feedback_report_shows_each_thumbs_down_with_what_the_answer_was_built_from(
    feedback_server: tuple[str, Settings], assistant: Assistant, tmp_path: Path
) -> None:
    url, settings = feedback_server
    with httpx.Client(timeout=60) as client:
        down = ask_and_rate(client, url, QUESTION, "down", "Too technical for a parent")
        urgent = ask_and_rate(client, url, URGENT, "down", None)
        ask_and_rate(client, url, OFF_TOPIC, "up", "fine")
        stream = stream_answer(client, url, "What are the side effects of IVIG?")
        ack = client.post(f"{url}/api/feedback", json={"answer_id": stream["answer_id"], "rating": "down"})
        assert ack.status_code == 201
        # An id this server never issued is stored too, without facts (another server, a restart).
        elsewhere = AnswerIds(SHARED_SECRET).sign("elsewhere-1")  # signed with the shared secret
        stray = client.post(f"{url}/api/feedback", json={"answer_id": elsewhere, "rating": "down"})
        assert stray.status_code == 201
    assert urgent["status"] == Status.URGENT_CARE

    report = json.loads(run_cli(settings, "feedback", "--json"))
    assert (report["ratings"], report["up"], report["down"]) == (5, 1, 4)
    rows = {r["answer_id"]: r for r in report["down_rated"]}
    assert set(rows) == {down["answer_id"], urgent["answer_id"], stream["answer_id"], elsewhere}
    first = rows[down["answer_id"]]
    assert first["status"] == down["status"] and first["comment"] == "Too technical for a parent"
    assert first["reasons"] == [r["id"] for r in down["reasons"]]
    assert [s["chunk_id"] for s in first["sources"]] == [c["chunk_id"] for c in down["citations"]]
    assert first["index_version"] == assistant.manifest.version and first["engine"] == down["engine"]
    assert rows[urgent["answer_id"]]["status"] == "urgent_care"
    assert rows[stream["answer_id"]]["sources"]  # a streamed answer's facts are kept as well
    assert rows[elsewhere]["status"] is None
    assert report["by_status"]["urgent_care"] == {"up": 0, "down": 1}
    assert report["by_index_version"][assistant.manifest.version]["down"] == 3
    assert "question" not in first  # log_questions is off: no question anywhere
    everything = json.dumps(report) + run_cli(settings, "feedback")
    assert QUESTION not in everything and URGENT not in everything

    table = " ".join(run_cli(settings, "feedback").split())
    assert "Down-rated answers (4)" in table and "urgent_care" in table and "Too technical" in table

    out = tmp_path / "ratings.csv"
    run_cli(settings, "feedback", "--export", str(out), "--json")
    with out.open(encoding="utf-8") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 5 and "question" not in exported[0]
    assert [r["comment"] for r in exported if r["rating"] == "up"] == ["fine"]
    by_id = {r["answer_id"]: r for r in exported}
    assert by_id[down["answer_id"]]["reasons"] == "; ".join(first["reasons"])
    assert down["citations"][0]["chunk_id"] in by_id[down["answer_id"]]["sources"]


def test_questions_appear_in_the_report_only_when_log_questions_is_on(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(
        feedback_db=tmp_path / "feedback.sqlite3", log_questions=True, rate_limit_per_minute=0, chat_ui=False
    )
    with (
        BackgroundServer(create_app(settings, assistant=assistant), settings) as url,
        httpx.Client(timeout=60) as client,
    ):
        ask_and_rate(client, url, QUESTION, "down", None)
    shown = json.loads(run_cli(settings, "feedback", "--json"))
    assert shown["down_rated"][0]["question"] == QUESTION
    # The same database reviewed with log_questions off: the stored question is not shown.
    hidden = json.loads(run_cli(settings.updated(log_questions=False), "feedback", "--json"))
    assert "question" not in hidden["down_rated"][0] and QUESTION not in json.dumps(hidden)


def test_since_and_retention_work_on_the_stored_times(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(
        feedback_db=tmp_path / "feedback.sqlite3",
        rate_limit_per_minute=0,
        chat_ui=False,
        feedback_retention_days=30,
    )
    with (
        BackgroundServer(create_app(settings, assistant=assistant), settings) as url,
        httpx.Client(timeout=60) as client,
    ):
        old = ask_and_rate(client, url, QUESTION, "down", "old")
        recent = ask_and_rate(client, url, OFF_TOPIC, "down", "recent")
    age = {old["answer_id"]: timedelta(days=45), recent["answer_id"]: timedelta(days=2)}
    with sqlite3.connect(settings.server.feedback_db) as conn:
        for answer_id, delta in age.items():
            stamp = (datetime.now(UTC) - delta).isoformat(timespec="microseconds")
            conn.execute("UPDATE feedback SET created_at = ? WHERE answer_id = ?", (stamp, answer_id))

    week = json.loads(run_cli(settings, "feedback", "--since", "7d", "--json"))
    assert [r["answer_id"] for r in week["down_rated"]] == [recent["answer_id"]]
    assert json.loads(run_cli(settings, "feedback", "--since", "1d", "--json"))["ratings"] == 0
    assert json.loads(run_cli(settings, "feedback", "--json"))["ratings"] == 2
    bad = CliRunner().invoke(app, ["feedback", "--since", "last tuesday"], env=settings_env(settings))
    assert bad.exit_code == 2 and "7d" in bad.output

    # A server start purges what is older than feedback_retention_days (30): the 45-day-old one.
    with BackgroundServer(create_app(settings, assistant=assistant), settings):
        wait_until(lambda: FeedbackStore(settings.server.feedback_db).count() == 1, 30, "the purge")
    left = json.loads(run_cli(settings, "feedback", "--json"))
    assert [r["answer_id"] for r in left["down_rated"]] == [recent["answer_id"]]


def test_parse_since_reads_durations_and_dates() -> None:
    now = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-05-01", now) == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="7d"):
        parse_since("yesterday", now)


def test_a_feedback_file_of_the_first_release_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    with sqlite3.connect(db) as conn:  # the schema and a row as the first release wrote them
        conn.executescript(
            """CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, answer_id TEXT NOT NULL,
            rating TEXT NOT NULL CHECK (rating IN ('up', 'down')), comment TEXT, question TEXT,
            created_at TEXT NOT NULL);
            CREATE INDEX feedback_answer ON feedback (answer_id);
            INSERT INTO feedback (answer_id, rating, comment, question, created_at)
            VALUES ('old-1', 'down', 'kept', NULL, '2026-01-02T03:04:05+00:00');"""
        )
    store = FeedbackStore(db)
    try:
        (old,) = store.recent()
        assert (old.answer_id, old.comment, old.facts) == ("old-1", "kept", None)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 2
            columns = {row[1] for row in conn.execute("PRAGMA table_info(feedback)")}
        assert {"status", "reasons", "cited", "index_version", "engine"} <= columns
    finally:
        store.close()
    FeedbackStore(db).close()  # opening again applies nothing twice


def chat_after_one_answer(assistant: Assistant, settings: Settings) -> tuple[Any, ChatHandlers, ChatSession]:
    """The app's state, the chat's handlers on it, and a chat session that has had one answer."""
    app_state = create_app(settings, assistant=assistant).state.ivig
    handlers = ChatHandlers(
        get_assistant=lambda: assistant,
        get_sources=dict,
        settings=settings,
        limiter=TokenBucketLimiter(0),
        feedback=app_state.feedback,
        on_answer=app_state.answered,
    )
    session = ChatSession()
    for _ in handlers.respond(QUESTION, session, None):  # type: ignore[arg-type]
        pass
    return app_state, handlers, session


def test_a_chat_rating_is_stored_with_its_answers_facts(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(feedback_db=tmp_path / "feedback.sqlite3")
    app_state, handlers, session = chat_after_one_answer(assistant, settings)
    (index, answer_id) = next(iter(session.answer_ids.items()))
    handlers.rate(session, gr.LikeData(None, {"index": index, "value": "", "liked": False}))
    (stored,) = app_state.feedback.recent()
    assert stored.answer_id == answer_id and stored.rating == "down"
    assert stored.facts is not None and stored.facts.status == "answered" and stored.facts.cited
    assert stored.question is None
    app_state.feedback.close()


def test_a_chat_rating_while_the_feedback_database_is_busy_says_so_and_can_be_given_again(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(feedback_db=tmp_path / "feedback.sqlite3")
    app_state, handlers, session = chat_after_one_answer(assistant, settings)
    index = next(iter(session.answer_ids))
    like = gr.LikeData(None, {"index": index, "value": "", "liked": True})
    holder = sqlite3.connect(settings.server.feedback_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        note, _ = handlers.rate(session, like)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "could not be saved" in str(note)
    assert app_state.feedback.recent() == []
    note, _ = handlers.rate(session, like)  # the same click again, now stored
    assert "saved" in str(note) and "could not" not in str(note)
    assert [f.rating for f in app_state.feedback.recent()] == ["up"]
    app_state.feedback.close()


# --- 3. metrics ---------------------------------------------------------------------------------------
def test_metrics_count_requests_answers_and_refusals_behind_the_api_key(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(
        feedback_db=tmp_path / "feedback.sqlite3",
        metrics=True,
        api_key=API_KEY,
        rate_limit_per_minute=4,
        chat_ui=False,
    )
    key = {"X-API-Key": API_KEY}
    doc_id = next(iter(assistant.manifest.documents))
    with (
        BackgroundServer(create_app(settings, assistant=assistant), settings) as url,
        httpx.Client(timeout=60, headers=key) as client,
    ):
        assert httpx.get(f"{url}/metrics").status_code == 401  # no key
        statuses = [
            client.post(f"{url}/api/ask", json={"question": q}).status_code for q in (QUESTION, URGENT)
        ]
        assert client.get(f"{url}/api/sources/{doc_id}").status_code == 200
        statuses += [
            client.post(f"{url}/api/ask", json={"question": OFF_TOPIC}).status_code for _ in range(3)
        ]
        assert statuses.count(429) == 1  # 4 a minute: the fifth is refused
        r = client.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    version = assistant.manifest.version
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    common = {"engine": "extractive", "index_version": version}
    assert value("ivig_qa_answers_total", status="answered", **common) == 1
    assert value("ivig_qa_answers_total", status="urgent_care", **common) == 1
    assert value("ivig_qa_answers_total", status="not_in_sources", **common) == 2
    assert value("ivig_qa_rate_limit_refusals_total") == 1
    assert value("ivig_qa_http_requests_total", method="POST", route="/api/ask", status="200") == 4
    assert value("ivig_qa_http_requests_total", method="POST", route="/api/ask", status="429") == 1
    assert (
        value("ivig_qa_http_requests_total", method="GET", route="/api/sources/{doc_id}", status="200") == 1
    )
    assert value("ivig_qa_http_request_duration_seconds_count", method="POST", route="/api/ask") == 5
    assert value("ivig_qa_index_info", version=version, engine="extractive") == 1
    assert value("ivig_qa_index_documents") == len(assistant.manifest.documents)
    assert value("ivig_qa_ready") == 1
    for question in (QUESTION, URGENT, OFF_TOPIC):
        assert question not in text
    assert f"/api/sources/{doc_id}" not in text  # route templates, not raw paths


def test_metrics_are_off_unless_enabled(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    settings = session_settings.updated(feedback_db=tmp_path / "feedback.sqlite3", chat_ui=False)
    with BackgroundServer(create_app(settings, assistant=assistant), settings) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404


@pytest.mark.parametrize(
    ("engine", "kind"),
    [
        ("extractive", ("extractive", None)),
        ("llm:qwen2.5-coder-1.5b-instruct-q4_k_m", ("llm", None)),
        ("extractive (llm fallback: timeout)", ("extractive", "timeout")),
        ("extractive (llm fallback: error (ConnectionError))", ("extractive", "error")),
        ("extractive (llm fallback: verification error (ValueError))", ("extractive", "verification error")),
        ("extractive (llm skipped: no relevant sources)", ("extractive", None)),
    ],
)
def test_engine_labels_stay_bounded(engine: str, kind: tuple[str, str | None]) -> None:
    assert engine_kind(engine) == kind


# --- 4 and 5. JSON logs and a clean shutdown, on a real `ivig-qa serve` ---------------------------
class SlowLLM(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint whose streamed tokens wait for ``release`` when ``hold`` is set."""

    TOKENS = ("Infantile ", "spasms ", "often ", "respond ", "within ", "two ", "weeks ", "[1]", ".")

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowLLMHandler)
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()  # set once a held stream has sent its first tokens
        self.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _SlowLLMHandler(BaseHTTPRequestHandler):
    server: SlowLLM

    def log_message(self, *_args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tokens = SlowLLM.TOKENS
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(tokens)}
            self._json({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        held = self.server.hold.is_set()
        for i, token in enumerate(tokens):
            self._chunk(body["model"], {"content": token}, None)
            if held and i == 2:
                self.server.held.set()
                self.server.release.wait(60)
            time.sleep(0.05)
        self._chunk(body["model"], {}, "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _chunk(self, model: str, delta: dict, finish: str | None) -> None:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()

    def _json(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stream_answer(client: httpx.Client, url: str, question: str) -> dict:
    with connect_sse(client, "POST", f"{url}/api/ask/stream", json={"question": question}) as events:
        for event in events.iter_sse():
            if event.event == "answer":
                return json.loads(event.data)
    raise AssertionError("the stream ended without an answer")


@pytest.fixture
def slow_llm() -> Iterator[SlowLLM]:
    pytest.importorskip("langchain_openai", reason="the LLM extra (langchain-openai) is not installed")
    server = SlowLLM()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/api/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_lets_a_streamed_answer_finish_then_closes_the_feedback_store_with_json_logs(
    session_settings: Settings, slow_llm: SlowLLM, tmp_path: Path, assistant: Assistant
) -> None:
    db = tmp_path / "feedback.sqlite3"
    settings = session_settings.updated(
        feedback_db=db,
        engine="llm",
        backend="openai",
        base_url=slow_llm.url,
        judge=False,
        log_format="json",
        shutdown_grace_s=30,
        rate_limit_per_minute=0,
    )  # the chat stays mounted, as `ivig-qa serve` runs by default
    server = AppServer(settings_env(settings), tmp_path / "serve.log").start()
    assert server.proc is not None
    try:
        with httpx.Client(timeout=60) as client:
            answered = client.post(f"{server.url}/api/ask", json={"question": QUESTION}).json()
            assert (
                client.post(
                    f"{server.url}/api/feedback", json={"answer_id": answered["answer_id"], "rating": "down"}
                ).status_code
                == 201
            )

            slow_llm.hold.set()
            deltas_after_signal: list[str] = []
            final: dict | None = None
            with connect_sse(
                client, "POST", f"{server.url}/api/ask/stream", json={"question": QUESTION}
            ) as events:
                assert slow_llm.held.wait(60), "the model was never asked"
                server.proc.send_signal(signal.SIGTERM)
                # It stops accepting at once, while the stream is still held in flight…
                wait_until(lambda: refused(server.url), 15, "the server refusing new connections")
                assert server.proc.poll() is None
                slow_llm.release.set()
                # …and the stream still runs to its end.
                for event in events.iter_sse():
                    if event.event == "delta":
                        deltas_after_signal.append(json.loads(event.data)["text"])
                    elif event.event == "answer":
                        final = json.loads(event.data)
            assert final is not None and final["disclaimer"] and final["answer_id"]
            # "weeks" left the model only after the release, so after SIGTERM.
            assert "weeks" in "".join(deltas_after_signal)
        # uvicorn re-raises the signal once it has shut down cleanly (what init systems expect).
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()

    # The feedback store was closed cleanly (SQLite removes its write-ahead log on the last close).
    assert db.exists() and not Path(f"{db}-wal").exists()
    assert FeedbackStore(db).count() == 1

    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    asks = [line for line in lines if line.get("route") == "/api/ask"]
    assert asks and asks[0]["status"] == 200 and asks[0]["duration_ms"] > 0
    assert asks[0]["answer_status"] == answered["status"] and asks[0]["request_id"] != "-"
    streams = [line for line in lines if line.get("route") == "/api/ask/stream"]
    assert streams and streams[0]["status"] == 200 and streams[0]["answer_status"] == final["status"]
    messages = [line["message"] for line in lines]
    closed = next(i for i, m in enumerate(messages) if m.startswith("feedback store closed"))
    assert messages.index("Application shutdown complete.") > closed > messages.index(streams[0]["message"])
    assert QUESTION not in (tmp_path / "serve.log").read_text()  # log_questions is off
