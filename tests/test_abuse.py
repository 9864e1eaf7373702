"""Abuse and overload, probed as an attacker would, against real servers on localhost.

Each test is one way in which a client could make the service cost too much, bypass the
API key or the rate limit, store files, forge log lines or break other people's chats
(issue 15). Loops are bounded and everything stays on the loopback interface. Servers run
in-process (``BackgroundServer``) except where the log file or the process's memory is
what is checked (``AppServer``, the real ``ivig-qa serve``).
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import random
import re
import socket
import sqlite3
import string
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.feedback import BUSY_TIMEOUT_S
from ivig_qa.settings import Settings
from ivig_qa.testing import AppServer, BackgroundServer, settings_env
from ivig_qa.types import Status
from ivig_qa.web.app import create_app

PORTAL = "https://portal.example.org"
API_KEY = "abuse-key-5d1e"
QUESTION = "How often is IVIG given?"
READ_TIMEOUT_S = 1.5
REPO = Path(__file__).resolve().parent.parent


def made_up_text(chars: int, seed: int) -> str:
    """Words no source uses (every one a typo lookup), ``chars`` long."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < chars:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 11)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def maximal_history(settings: Settings) -> list[dict[str, str]]:
    """As much history as the documented limits allow: every turn at the longest length."""
    p = settings.policy
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": made_up_text(p.max_history_message_chars, i),
        }
        for i in range(p.max_history_turns)
    ]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


# --- servers ------------------------------------------------------------------------------------
def variant(settings: Settings, tmp: Path, **changes: object) -> Settings:
    return settings.updated(
        **{"feedback_db": tmp / "feedback.sqlite3", "rate_limit_per_minute": 100_000, **changes}
    )


@pytest.fixture(scope="module")
def open_settings(session_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The defaults (chat on, no key) with one portal and a short read deadline."""
    return variant(
        session_settings,
        tmp_path_factory.mktemp("open"),
        cors_origins=[PORTAL],
        read_timeout_s=READ_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def open_url(assistant: Assistant, open_settings: Settings) -> Iterator[str]:
    with BackgroundServer(create_app(open_settings, assistant=assistant), open_settings) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(assistant: Assistant, session_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """An API key and the chat served anyway (``chat_ui = true``: a public page)."""
    settings = variant(session_settings, tmp_path_factory.mktemp("keyed"), api_key=API_KEY, chat_ui=True)
    with BackgroundServer(create_app(settings, assistant=assistant), settings) as url:
        yield url


@pytest.fixture(scope="module")
def key_only_url(assistant: Assistant, session_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """An API key and ``chat_ui`` left at its default: no keyless chat at all."""
    settings = variant(session_settings, tmp_path_factory.mktemp("key-only"), api_key=API_KEY)
    with BackgroundServer(create_app(settings, assistant=assistant), settings) as url:
        yield url


@pytest.fixture(scope="module")
def app_server(session_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The real ``ivig-qa serve`` (its own logging, its own process to measure)."""
    tmp = tmp_path_factory.mktemp("serve")
    settings = variant(session_settings, tmp, cors_origins=[PORTAL])
    with AppServer(settings_env(settings), tmp / "serve.log") as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


# --- 1. the cost of a valid request --------------------------------------------------------------
def test_the_maximal_history_costs_a_small_multiple_of_a_question(
    open_url: str, open_settings: Settings, client: httpx.Client
) -> None:
    def seconds(payload: dict) -> float:
        started = time.perf_counter()
        r = client.post(f"{open_url}/api/ask", json=payload)
        assert r.status_code == 200, r.text[:300]
        return time.perf_counter() - started

    payload = {"question": "How often is it given?", "history": maximal_history(open_settings)}
    seconds(payload)  # warm the caches of the code paths, not of these words
    normal = min(seconds({"question": QUESTION}) for _ in range(5))
    maximal = min(seconds({**payload, "history": maximal_history(open_settings)}) for _ in range(3))
    assert maximal <= 15 * normal, (
        f"maximal history {maximal * 1000:.0f} ms vs question {normal * 1000:.0f} ms"
    )


def test_typo_lookups_find_what_a_scan_of_every_word_finds(assistant: Assistant) -> None:
    """The deletion index gives the corrections difflib finds over all words of the initial.

    It looks only within two deletions, so a match difflib finds three edits away (a long word
    whose random garble lands near another word) can be missed: rare, and bounded here."""
    vocabulary = assistant.retriever.vocabulary
    by_initial: dict[str, list[str]] = defaultdict(list)
    for word in vocabulary.words:
        by_initial[word[0]].append(word)
    rng = random.Random(7)
    words = sorted(w for w in vocabulary.words if 6 <= len(w) <= 16 and w.isalpha())
    agree = total = 0
    for word in rng.sample(words, 150):
        for edits in (1, 2):
            typo = word
            for _ in range(edits):
                i = rng.randrange(1, len(typo))
                typo = typo[:i] + rng.choice(string.ascii_lowercase) + typo[i + 1 :]
            if typo in vocabulary:
                continue
            scanned = difflib.get_close_matches(typo, by_initial[typo[0]], n=1, cutoff=0.8)
            total += 1
            agree += vocabulary.closest(typo) == (scanned[0] if scanned else None)
    assert total > 200 and agree >= 0.98 * total, (agree, total)


def test_a_normal_question_answers_while_eight_maximal_histories_are_in_flight(
    open_url: str, open_settings: Settings
) -> None:
    histories = [maximal_history(open_settings) for _ in range(8)]
    started = threading.Barrier(9)

    def heavy(history: list[dict[str, str]]) -> int:
        with httpx.Client(timeout=120) as c:
            started.wait()
            return c.post(
                f"{open_url}/api/ask", json={"question": "And how often?", "history": history}
            ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool, httpx.Client(timeout=60) as c:
        futures = [pool.submit(heavy, h) for h in histories]
        started.wait()
        time.sleep(0.05)  # the heavy requests are on their way
        begun = time.perf_counter()
        r = c.post(f"{open_url}/api/ask", json={"question": QUESTION})
        elapsed = time.perf_counter() - begun
        assert [f.result() for f in futures] == [200] * 8
    assert r.status_code == 200 and r.json()["status"] == "answered"
    assert elapsed < 1.0, f"a normal question took {elapsed:.2f} s"


# --- 2. the chat's session history ----------------------------------------------------------------
def chat_turn(client: httpx.Client, url: str, session: str, question: str) -> tuple[list[dict], int]:
    """One question through the chat's own queue protocol: its events and the bytes streamed."""
    joined = client.post(
        f"{url}/gradio_api/queue/join",
        json={"data": [question, None], "fn_index": 0, "trigger_id": 4, "session_hash": session},
    )
    assert joined.status_code == 200, joined.text
    events, size = [], 0
    with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            size += len(line)
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("msg") == "process_completed":
                    break
    return events, size


def test_a_refused_chat_message_never_enters_the_history(
    open_url: str, open_settings: Settings, assistant: Assistant, client: httpx.Client
) -> None:
    from ivig_qa.web.chat import ChatHandlers, ChatSession

    long = made_up_text(open_settings.policy.max_question_chars * 30, seed=99)  # ~120 KB, under the body cap
    # Through the real server: the refused message is shown cut to the limit, and the next
    # question is answered with a stream that does not carry the message again.
    chat_turn(client, open_url, "abuse1", QUESTION)
    _, refused_size = chat_turn(client, open_url, "abuse1", long)
    events, next_size = chat_turn(client, open_url, "abuse1", "What are the side effects of IVIG?")
    assert events[-1]["success"] is True
    assert refused_size < len(long) / 4 and next_size < len(long) / 4
    # The session itself: only answered exchanges become context.
    handlers = ChatHandlers(
        lambda: assistant, dict, open_settings, limiter=SimpleNamespace(take=lambda _c: 0.0), feedback=None
    )  # type: ignore[arg-type]
    session = ChatSession()
    request = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"))
    for question in (QUESTION, long, "What are the side effects of IVIG?"):
        for _ in handlers.respond(question, session, request):  # type: ignore[arg-type]
            pass
    assert [m.content for m in session.history() if m.role == "user"] == [
        QUESTION,
        "What are the side effects of IVIG?",
    ]
    assert all(len(m["content"]) <= 2 * open_settings.policy.max_question_chars for m in session.shown)


# --- 3. the rate limit ------------------------------------------------------------------------------
def rotating_forwarded_for(url: str, n: int) -> list[int]:
    with httpx.Client(timeout=60) as c:
        return [
            c.post(
                f"{url}/api/ask", json={"question": QUESTION}, headers={"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in range(n)
        ]


def test_a_rotating_forwarded_for_header_does_not_escape_the_rate_limit(
    assistant: Assistant, session_settings: Settings, tmp_path: Path
) -> None:
    untrusted = variant(session_settings, tmp_path / "a", rate_limit_per_minute=3, chat_ui=False)
    with BackgroundServer(create_app(untrusted, assistant=assistant), untrusted) as url:
        codes = rotating_forwarded_for(url, 8)
    assert codes.count(200) == 3 and codes.count(429) == 5
    # Behind a configured proxy the header names the client, so each address has its own bucket.
    trusted = variant(
        session_settings,
        tmp_path / "b",
        rate_limit_per_minute=3,
        chat_ui=False,
        forwarded_allow_ips="127.0.0.1",
    )
    with BackgroundServer(create_app(trusted, assistant=assistant), trusted) as url:
        assert rotating_forwarded_for(url, 8) == [200] * 8


# --- 4 and 5. the API key, Gradio's own routes, uploads -------------------------------------------
GRADIO_API_CALLS = [
    ("POST", "/gradio_api/call/chat", {"data": [QUESTION, None]}),
    ("POST", "/gradio_api/call/v2/chat", {"data": [QUESTION, None]}),
    ("POST", "/gradio_api/run/chat", {"data": [QUESTION, None]}),
    ("POST", "/gradio_api/api/chat", {"data": [QUESTION, None]}),
    ("POST", "/gradio_api/run/predict", {"data": [QUESTION, None], "fn_index": 0}),
    ("GET", "/gradio_api/info", None),
    ("GET", "/gradio_api/openapi.json", None),
    ("GET", "/gradio_api/file=/etc/hostname", None),
    ("GET", "/gradio_api/proxy=http://127.0.0.1:9/", None),
    (
        "POST",
        "/gradio_api/component_server",
        {"component_id": 999, "fn_name": "x", "data": None, "session_hash": "a"},
    ),
]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": API_KEY}], ids=["no key", "with key"])
def test_gradio_rest_routes_and_uploads_are_closed(
    keyed_url: str, client: httpx.Client, headers: dict
) -> None:
    for method, path, body in GRADIO_API_CALLS:
        r = client.request(method, f"{keyed_url}{path}", json=body, headers=headers)
        assert_error(r, 404, "not_found")
    upload = client.post(
        f"{keyed_url}/gradio_api/upload",
        files={"files": ("page.html", b"<script>alert(1)</script>", "text/html")},
        headers={**headers, "Origin": "https://evil.example.com"},
    )
    assert_error(upload, 404, "not_found")
    assert "access-control-allow-origin" not in upload.headers


def test_with_a_key_every_answering_route_needs_it(
    keyed_url: str, key_only_url: str, client: httpx.Client
) -> None:
    for url in (keyed_url, key_only_url):
        for path in ("/api/ask", "/api/ask/stream", "/api/feedback"):
            assert_error(client.post(f"{url}{path}", json={"question": QUESTION}), 401, "unauthorized")
        # Checked before the body is parsed: a keyless malformed body is a 401, not a 422.
        bad = client.post(
            f"{url}/api/ask", content=b'{"question": ', headers={"Content-Type": "application/json"}
        )
        assert_error(bad, 401, "unauthorized")
        ok = client.post(f"{url}/api/ask", json={"question": QUESTION}, headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200
    # With the chat left at its default, a key means no keyless way to an answer at all.
    assert client.get(f"{key_only_url}/").status_code == 404
    join = {"data": [QUESTION, None], "fn_index": 0, "session_hash": "abc"}
    assert client.post(f"{key_only_url}/gradio_api/queue/join", json=join).status_code == 404


# --- 6. body, headers and slow clients --------------------------------------------------------------
def test_large_bodies_are_refused_before_they_are_read(app_server: AppServer) -> None:
    url = app_server.url
    body = b"x" * 5_000_000
    with httpx.Client(timeout=30) as c:
        c.post(f"{url}/api/ask", json={"question": QUESTION})  # warm
        _, before = app_server.memory_mb()

        def send(_i: int) -> tuple[int, float]:
            started = time.perf_counter()
            r = c.post(f"{url}/api/ask", content=body, headers={"Content-Type": "application/json"})
            return r.status_code, time.perf_counter() - started

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, range(8)))
        chunked = c.post(f"{url}/api/ask", content=iter([b"{" * 100_000] * 50))  # no Content-Length
        _, after = app_server.memory_mb()
    assert [code for code, _ in results] == [413] * 8
    assert max(s for _, s in results) < 10
    assert_error(chunked, 413, "body_too_large")
    assert after - before < 30, f"RSS grew {after - before:.0f} MB"


def raw_request(url: str, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    received = b""
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        if data:
            sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received, time.perf_counter() - started


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"POST /api/ask HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
        b'POST /api/ask HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{"question": ',
    ],
    ids=["nothing sent", "half the headers", "half the body"],
)
def test_half_sent_requests_are_cut_off(open_url: str, data: bytes) -> None:
    received, seconds = raw_request(open_url, data)
    assert b"200 OK" not in received
    assert READ_TIMEOUT_S - 0.2 <= seconds < READ_TIMEOUT_S + 4


def test_oversized_headers_are_refused(open_url: str, client: httpx.Client) -> None:
    assert client.get(f"{open_url}/api/health", headers={"X-Padding": "a" * 8_000}).status_code == 200
    assert client.get(f"{open_url}/api/health", headers={"X-Padding": "a" * 40_000}).status_code == 431


# --- 7. echoed terms --------------------------------------------------------------------------------
def test_an_answer_to_made_up_words_stays_short_enough_to_send_back(
    open_url: str, open_settings: Settings, client: httpx.Client
) -> None:
    question = made_up_text(3_986, seed=5) + "?"
    r = client.post(f"{open_url}/api/ask", json={"question": question})
    assert r.status_code == 200 and r.json()["status"] == Status.NOT_IN_SOURCES.value
    answer = r.json()["answer"]
    assert answer.count("“") <= 5 and len(answer) < open_settings.policy.max_history_message_chars / 2
    history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    follow_up = client.post(f"{open_url}/api/ask", json={"question": QUESTION, "history": history})
    assert follow_up.status_code == 200 and follow_up.json()["status"] == "answered"


# --- 8 and 9. logs and malformed Gradio calls ------------------------------------------------------
def test_log_lines_cannot_be_forged_and_bad_chat_calls_leave_no_traceback(app_server: AppServer) -> None:
    url = app_server.url
    with httpx.Client(timeout=30) as c:
        assert c.get(f"{url}/api/x%0aFORGED-LINE%20admin%20logged%20in%1b[31m").status_code == 404
        c.get(f"{url}/%0d%0aFORGED-CHAT-LINE")
        for body in (
            {"data": [QUESTION, None], "fn_index": 999, "session_hash": "abc"},
            {"data": "x", "fn_index": 0, "session_hash": "abc"},
            {"fn_index": 0},
            {"data": [], "fn_index": 0, "session_hash": "abc"},  # the chat takes two values
            {"data": [None], "event_data": None, "fn_index": 3, "session_hash": "abc"},  # a like, no data
            {"data": [None], "event_data": {"index": 1}, "fn_index": 3, "session_hash": "abc"},
        ):
            assert_error(c.post(f"{url}/gradio_api/queue/join", json=body), 422, "invalid_request")
        bad_json = c.post(
            f"{url}/gradio_api/queue/join", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert_error(bad_json, 422, "invalid_request")
        assert_error(
            c.post(f"{url}/gradio_api/component_server", json={"component_id": 12345}), 404, "not_found"
        )
        c.get(f"{url}/api/health")  # the last line before reading the log
    time.sleep(0.3)
    log = app_server.log_file.read_text("utf-8", errors="replace")
    assert "\\nFORGED-LINE admin logged in\\x1b[31m" in log  # it was logged, escaped
    assert not re.search(r"^FORGED", log, re.MULTILINE)
    assert "\x1b" not in log and "\r" not in log
    assert "Traceback" not in log


# --- 10. headers, docs and URLs ---------------------------------------------------------------------
def test_every_page_has_a_strict_policy(open_url: str, client: httpx.Client) -> None:
    for path in ("/", "/embed", "/demo"):
        r = client.get(f"{open_url}{path}")
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        script_src = re.search(r"script-src ([^;]*)", csp).group(1)  # type: ignore[union-attr]
        assert "'unsafe-inline'" not in script_src and "http" not in csp.replace(PORTAL, "")
        assert "frame-ancestors 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"]
    # The chat page's inline scripts run only because each one's hash is listed.
    chat = client.get(f"{open_url}/")
    assert f"frame-ancestors 'self' {PORTAL}" in chat.headers["content-security-policy"]
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", chat.text, re.DOTALL)
    assert inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in chat.headers["content-security-policy"]
    assert client.get(f"{open_url}/api/health").headers["x-content-type-options"] == "nosniff"


def test_docs_are_off_pages_ignore_the_host_header_and_health_answers_head(
    open_url: str, client: httpx.Client
) -> None:
    assert client.get(f"{open_url}/api/docs").status_code == 404
    assert client.get(f"{open_url}/api/openapi.json").status_code == 200
    head = client.head(f"{open_url}/api/health")
    assert head.status_code == 200 and head.content == b""
    for path in ("/embed", "/demo"):
        page = client.get(f"{open_url}{path}", headers={"Host": "evil.example.com"})
        assert page.status_code == 200 and "evil.example.com" not in page.text
        assert "widget.js" in page.text


# --- 11. feedback -----------------------------------------------------------------------------------
def test_feedback_takes_only_issued_answers_and_clean_fields(open_url: str, client: httpx.Client) -> None:
    issued = client.post(f"{open_url}/api/ask", json={"question": QUESTION}).json()["answer_id"]
    plain = issued.rsplit("-", 1)[0]
    for answer_id in ("0" * 32, plain, f"{plain}-{'0' * 20}", f"{'f' * 32}-{issued.rsplit('-', 1)[1]}"):
        r = client.post(f"{open_url}/api/feedback", json={"answer_id": answer_id, "rating": "up"})
        assert "answer_id" in [d["field"] for d in assert_error(r, 422, "invalid_request")["details"]]
    extra = client.post(f"{open_url}/api/feedback", json={"answer_id": issued, "rating": "up", "score": 5})
    assert_error(extra, 422, "invalid_request")
    for comment in ("forged\x1b[2J", "nul\x00byte", "bell\x07"):
        r = client.post(
            f"{open_url}/api/feedback", json={"answer_id": issued, "rating": "down", "comment": comment}
        )
        assert "comment" in [d["field"] for d in assert_error(r, 422, "invalid_request")["details"]]
    ok = client.post(
        f"{open_url}/api/feedback", json={"answer_id": issued, "rating": "down", "comment": "line\none"}
    )
    assert ok.status_code == 201


def test_a_locked_feedback_database_is_a_503_with_retry_after(
    open_url: str, open_settings: Settings, client: httpx.Client
) -> None:
    issued = client.post(f"{open_url}/api/ask", json={"question": QUESTION}).json()["answer_id"]
    holder = sqlite3.connect(open_settings.server.feedback_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        started = time.perf_counter()
        r = client.post(f"{open_url}/api/feedback", json={"answer_id": issued, "rating": "up"})
        assert time.perf_counter() - started >= BUSY_TIMEOUT_S * 0.9
        assert_error(r, 503, "busy")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (
        client.post(f"{open_url}/api/feedback", json={"answer_id": issued, "rating": "up"}).status_code == 201
    )


def test_history_follows_the_same_input_rule_as_the_question(open_url: str, client: httpx.Client) -> None:
    for content in ("before\x00after", "escape\x1b[31m"):
        r = client.post(
            f"{open_url}/api/ask", json={"question": "hi", "history": [{"role": "user", "content": content}]}
        )
        assert "history[0].content" in [
            d["field"] for d in assert_error(r, 422, "invalid_request")["details"]
        ]
    r = client.post(f"{open_url}/api/ask", json={"question": "nul\x00here"})
    assert "question" in [d["field"] for d in assert_error(r, 422, "invalid_request")["details"]]


def test_the_feedback_database_journal_is_not_committed() -> None:
    for name in ("feedback.sqlite3", "feedback.sqlite3-wal", "feedback.sqlite3-shm"):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{name} is not git-ignored"
