"""The OpenAI-compatible backend (the scale-out path) against a real server on localhost.

The server is llama.cpp's own (``python -m llama_cpp.server`` from the installed
llama-cpp-python, its ``server`` extra's packages come with our ``llm`` extra) over the packaged
model, started once for the module. Real questions go through ``Assistant`` with
``llm.backend = "openai"``: the answer is generated, verified and cited by the server's model, the
API key is sent, and a server that is down, refuses the key or never answers gives the documented
fallback to the extractive engine, not a traceback. Skipped without the ``llm`` extra, except
where CI promised it (``IVIG_QA_REQUIRE_LLM=1``): it fails there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.engines.llm import models
from ivig_qa.evaluation.checks import split_statements
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Status

KEY = "test-key-0d6f"  # the server's --api_key; a request without it gets 401
SERVER_MODULES = [
    "llama_cpp",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "pydantic_settings",
    "starlette_context",
]


def _missing(modules: list[str], *, model: bool) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[llm]', see README)"
    if model and not all(p.installed for p in models.parts()):
        return f"the packaged model {models.default_name()} is not installed (pip install -e '.[llm]')"
    return None


def _need(modules: list[str], *, model: bool = False) -> None:
    missing = _missing(modules, model=model)
    if missing and os.environ.get("IVIG_QA_REQUIRE_LLM") == "1":
        pytest.fail(f"IVIG_QA_REQUIRE_LLM=1 but {missing}")
    if missing:
        pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openai_settings(base: Settings, base_url: str, **overrides: object) -> Settings:
    # Generous limits: these tests check the backend, not speed (CI shares its 2 cores).
    return base.updated(
        **{
            "engine": "llm",
            "backend": "openai",
            "base_url": base_url,
            "openai_api_key": KEY,
            "first_token_timeout_s": 300,
            "timeout_s": 900,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """llama.cpp's OpenAI-compatible server over the packaged model: (its /v1 URL, its log)."""
    _need([*SERVER_MODULES, "langchain_openai"], model=True)
    gguf = models.assemble(Settings.load().llm.model_dir)
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--api_key", KEY]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_server_lists_its_model_and_wants_the_key(server: tuple[str, Path]) -> None:
    url, _log = server
    assert httpx.get(f"{url}/models").status_code == 401
    listed = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in listed["data"]] and listed["data"][0]["id"].endswith(".gguf")


QUESTIONS = [
    ("for lupus pts how often do they hook u up to the drip", ["once or twice a month"]),
    ("how many blood donors does it take to make one dose of ivig?", ["1,000", "100,000"]),
]
# Fallbacks the engine documents for a model that answered but whose sentences all failed the
# checks; anything else (an error, a timeout) means the backend itself is broken.
ANSWER_FALLBACKS = ("extractive (llm fallback: nothing verified)",)


def test_a_real_question_is_answered_verified_and_cited_through_the_server(
    assistant: Assistant, server: tuple[str, Path]
) -> None:
    url, log = server
    remote = Assistant(openai_settings(assistant.settings, url), assistant.store, assistant.retriever)
    assert remote.engine.name == f"llm:{models.default_name()}"
    generated = 0
    for question, facts in QUESTIONS:
        answer = remote.ask(question)
        assert answer.status == Status.ANSWERED and answer.disclaimer == DISCLAIMER
        assert any(f.lower() in answer.answer.lower() for f in facts), answer.answer
        if not answer.engine.startswith("llm:"):
            assert answer.engine in ANSWER_FALLBACKS, (answer.engine, answer.timings_ms)
            continue
        generated += 1
        assert answer.timings_ms["kept_sentences"] >= 1 and "llm_first_token" in answer.timings_ms
        statements, _uncited = split_statements(answer.answer)
        by_n = {c.n: c for c in answer.citations}
        for s in statements:  # each kept sentence cites a quote that passes the same check again
            assert s.cites and all(n in by_n for n in s.cites), s
            quote = " ".join(by_n[n].quote for n in s.cites)
            assert remote.engine.judge.check(s.text, quote) is None, (s.text, quote)
        for c in answer.citations:
            text = (assistant.settings.index.corpus_dir / f"{c.doc_id}.txt").read_text("utf-8")
            assert text[c.start : c.end] == c.quote
    assert generated >= 1, "the server's model answered no question itself"
    assert log.read_text().count('POST /v1/chat/completions HTTP/1.1" 200') >= len(QUESTIONS)


def test_the_answer_streams_from_the_server(assistant: Assistant, server: tuple[str, Path]) -> None:
    url, _log = server
    remote = Assistant(openai_settings(assistant.settings, url), assistant.store, assistant.retriever)
    items = list(remote.stream(QUESTIONS[0][0]))
    answer = items[-1]
    pieces = [p for p in items[:-1] if isinstance(p, str)]
    assert len(pieces) > 3 and answer.engine.startswith(("llm:", *ANSWER_FALLBACKS))
    assert answer.timings_ms["llm_first_token"] < answer.timings_ms["total"]


def test_a_wrong_key_falls_back_and_says_so(assistant: Assistant, server: tuple[str, Path]) -> None:
    url, _log = server
    settings = openai_settings(assistant.settings, url, openai_api_key="not-the-key")
    answer = Assistant(settings, assistant.store, assistant.retriever).ask(QUESTIONS[0][0])
    assert answer.status == Status.ANSWERED and "once or twice a month" in answer.answer
    assert re.fullmatch(r"extractive \(llm fallback: error \(\w*AuthenticationError\)\)", answer.engine), (
        answer.engine
    )


# -- no model needed: a server that is down, or that never answers ---------------------------------
def test_a_server_that_is_down_falls_back(assistant: Assistant) -> None:
    _need(["langchain_openai"])
    settings = openai_settings(assistant.settings, f"http://127.0.0.1:{free_port()}/v1")
    answer = Assistant(settings, assistant.store, assistant.retriever).ask(QUESTIONS[0][0])
    assert answer.status == Status.ANSWERED and answer.disclaimer == DISCLAIMER
    # The reason names the client's error class (openai's ConnectionError, whatever its version calls it).
    assert re.fullmatch(r"extractive \(llm fallback: error \(\w*ConnectionError\)\)", answer.engine), (
        answer.engine
    )
    assert "once or twice a month" in answer.answer


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[bytes]]]:
    """Accepts connections and reads each request, but never answers: (its /v1 URL, the requests)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    requests: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                if not (block := conn.recv(65536)):
                    break
                data += block
        requests.append(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", requests
    listener.close()
    for conn in held:
        conn.close()


def _length(request: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)", request.split(b"\r\n\r\n", 1)[0])
    return int(found.group(1)) if found else 0


def test_a_server_that_never_answers_times_out_and_falls_back(
    assistant: Assistant, silent_server: tuple[str, list[bytes]]
) -> None:
    _need(["langchain_openai"])
    url, requests = silent_server
    settings = openai_settings(
        assistant.settings, url, first_token_timeout_s=1, timeout_s=3, model_name="served-name"
    )
    answer = Assistant(settings, assistant.store, assistant.retriever).ask(QUESTIONS[0][0])
    assert answer.status == Status.ANSWERED and "once or twice a month" in answer.answer
    assert answer.engine == "extractive (llm fallback: timeout)"
    # What was sent: the key, the configured model name, a streamed request, our sampling fields.
    head, body = requests[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/chat/completions ")
    assert f"authorization: bearer {KEY}".encode() in head.lower()
    sent = json.loads(body)
    assert sent["model"] == "served-name" and sent["stream"] is True
    assert sent["repeat_penalty"] == 1.0 and sent["seed"] == 0 and sent["temperature"] == 0.0
    assert sent["messages"][-1]["role"] == "user" and "lupus pts" in sent["messages"][-1]["content"]
