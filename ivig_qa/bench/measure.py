"""The measurements, each with its result type.

Warm answer latency per stage (and a cProfile of it), HTTP load against an ``ivig-qa serve``
process (and its memory), cold start in a fresh process, and an index build beside the bare
encode of the same texts.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import math
import pstats
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from ivig_qa.bench.corpora import corpus_chunks
from ivig_qa.settings import Settings
from ivig_qa.testing import AppServer, quiet_env

Step = Callable[[str], None]
STAGES = ("normalise", "condense", "retrieve", "policy", "compose", "guard", "total")
COLD_START_QUESTION = "How often is IVIG given?"


@dataclass
class Stats:
    """A latency distribution in milliseconds."""

    n: int
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Stats:
        if not samples_ms:
            return cls(0, *[math.nan] * 6)
        a = np.asarray(samples_ms, dtype=float)
        p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99]))
        mean, top = float(a.mean()), float(a.max())
        return cls(len(a), *(round(v, 2) for v in (p50, p90, p95, p99, mean, top)))


@dataclass
class StageLatency:
    stage: str
    stats: Stats


@dataclass
class ProfileEntry:
    """One function's share of answering, from cProfile (times are per answer)."""

    function: str
    calls_per_answer: float
    self_ms: float
    cumulative_ms: float


@dataclass
class LatencyResult:
    questions: int
    rounds: int
    stages: list[StageLatency]
    profile: list[ProfileEntry] = field(default_factory=list)

    def stage(self, name: str) -> Stats:
        return next(s.stats for s in self.stages if s.stage == name)


@dataclass
class HttpLevel:
    """One concurrency level of the load test."""

    concurrency: int
    requests: int
    errors: int
    statuses: dict[str, int]
    seconds: float
    answers_per_s: float
    latency: Stats


@dataclass
class ServerResult:
    """The ``ivig-qa serve`` process: load-test levels, start-up and memory."""

    levels: list[HttpLevel]
    ready_s: float
    peak_rss_mb: float
    rss_after_mb: float

    def level(self, concurrency: int) -> HttpLevel | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)


@dataclass
class ColdStartRun:
    """One fresh process: spawn → first answer (the target), its phases, and its exit.

    ``exit_s`` (the answer printed → the process gone) is reported apart: it is Python
    tearing down torch & co., which a server never pays and a user of ``ask`` only waits
    for after the answer is on screen.
    """

    total_s: float
    startup_s: float
    imports_s: float
    open_index_s: float
    first_answer_s: float
    exit_s: float


@dataclass
class ColdStartResult:
    runs: list[ColdStartRun]
    median_s: float


@dataclass
class BuildResult:
    """An index build from scratch beside the bare encode of the same texts."""

    corpus: str
    documents: int
    chunks: int
    texts: int
    build_s: float
    encode_s: float
    build_chunks_per_s: float
    encode_chunks_per_s: float
    overhead: float


def measure_latency(settings: Settings, questions: list[str], rounds: int, profile: bool) -> LatencyResult:
    """Per-stage answer latency over the questions, after a warm-up; optionally profiled."""
    from ivig_qa.assistant import Assistant

    assistant = Assistant.load(settings)
    for q in questions[:10]:
        assistant.ask(q)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    for _ in range(rounds):
        for q in questions:
            for stage, ms in assistant.ask(q).timings_ms.items():
                samples.setdefault(stage, []).append(ms)
    stages = [StageLatency(s, Stats.of(samples.get(s, []))) for s in STAGES]
    top = profile_answers(assistant, questions) if profile else []
    return LatencyResult(len(questions), rounds, stages, top)


def profile_answers(assistant: object, questions: list[str], top: int = 15) -> list[ProfileEntry]:
    """Where answering spends its time: the functions with the most self time (cProfile)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for q in questions:
        assistant.ask(q)  # type: ignore[attr-defined]
    profiler.disable()
    stats = pstats.Stats(profiler)
    n = len(questions)
    rows = [
        ProfileEntry(
            f"{_short_path(file)}:{line}({name})",
            round(calls / n, 1),
            round(self_s * 1000 / n, 3),
            round(cum_s * 1000 / n, 3),
        )
        for (file, line, name), (_cc, calls, self_s, cum_s, _callers) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    return sorted(rows, key=lambda r: -r.self_ms)[:top]


def _short_path(file: str) -> str:
    """``…/site-packages/torch/nn/functional.py`` → ``torch/nn/functional.py``."""
    for marker in ("site-packages/", "ivig_qa/"):
        if marker in file:
            head = "ivig_qa/" if marker == "ivig_qa/" else ""
            return head + file.split(marker, 1)[1]
    return file


async def _load(url: str, questions: list[str], concurrency: int, total: int) -> HttpLevel:
    """``total`` POST /api/ask requests with ``concurrency`` in flight; stops by itself."""
    counter = itertools.count()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while (i := next(counter)) < total:
                started = time.perf_counter()
                try:
                    r = await client.post("/api/ask", json={"question": questions[i % len(questions)]})
                    ok = r.status_code == 200 and bool(r.json().get("disclaimer"))
                    statuses[str(r.status_code) if ok or r.status_code != 200 else "200-invalid"] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    errors = sum(n for s, n in statuses.items() if s != "200")
    rate = round((total - errors) / seconds, 2)
    return HttpLevel(concurrency, total, errors, dict(statuses), round(seconds, 3), rate, Stats.of(latencies))


def measure_server(
    settings_env: dict[str, str],
    questions: list[str],
    concurrency: tuple[int, ...],
    requests: int,
    work: Path,
    step: Step,
) -> ServerResult:
    """Start ``ivig-qa serve``, load it at each concurrency, and read its memory high-water mark."""
    with AppServer(settings_env, work / "serve.log") as server:
        step(f"server ready in {server.ready_s:.1f} s on {server.url}")
        asyncio.run(_load(server.url, questions, 4, 20))  # warm connections and threads
        levels = []
        for c in concurrency:
            step(f"HTTP load: {requests} requests at concurrency {c}")
            levels.append(asyncio.run(_load(server.url, questions, c, requests)))
        peak, now = server.memory_mb()
        return ServerResult(levels, round(server.ready_s, 2), round(peak, 1), round(now, 1))


# Monotonic clock readings are system-wide on Linux, so parent and child can be compared.
_COLD_CHILD = """
import json, sys, time
t0 = time.monotonic()
from ivig_qa.assistant import Assistant
from ivig_qa.settings import Settings
t1 = time.monotonic()
assistant = Assistant.load(Settings())
t2 = time.monotonic()
answer = assistant.ask({question!r})
t3 = time.monotonic()
assert answer.status.value == "answered", answer.status
print(json.dumps({{"t0": t0, "t1": t1, "t2": t2, "t3": t3}}), flush=True)
"""


def measure_cold_start(settings_env: dict[str, str], runs: int) -> ColdStartResult:
    """A fresh process that opens the built index and answers one question, end to end."""
    results = []
    code = _COLD_CHILD.format(question=COLD_START_QUESTION)
    for _ in range(runs):
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=quiet_env(**settings_env)
        )
        ended = time.monotonic()
        if done.returncode != 0:
            raise RuntimeError(f"the cold-start process failed:\n{done.stderr[-2000:]}")
        t = json.loads(done.stdout.strip().splitlines()[-1])
        parts = (t["t3"] - began, t["t0"] - began, t["t1"] - t["t0"], t["t2"] - t["t1"], t["t3"] - t["t2"])
        results.append(ColdStartRun(*(round(v, 3) for v in parts), exit_s=round(ended - t["t3"], 3)))
    return ColdStartResult(results, round(statistics.median(r.total_s for r in results), 3))


def measure_build(settings: Settings, label: str, repeat: int = 1) -> BuildResult:
    """A from-scratch build of ``settings.index.corpus_dir`` beside the bare encode of the same texts.

    The model is loaded and warmed before either clock starts; each gets the best of
    ``repeat`` runs (builds write to a fresh folder every time).
    """
    from sentence_transformers import SentenceTransformer

    from ivig_qa import doc2query
    from ivig_qa.embeddings import load_embeddings, resolve_model_path, use_torch_threads
    from ivig_qa.index import IndexStore, embedding_texts

    docs, chunks = corpus_chunks(settings.index.corpus_dir, settings)
    texts = embedding_texts(chunks, doc2query.load_cache(settings))
    model = SentenceTransformer(str(resolve_model_path(settings.index.embedding_model)), device="cpu")
    use_torch_threads(settings.index.build_threads)  # the bare encode gets the threads a build gets
    embeddings = load_embeddings(settings.index.embedding_model, settings.index.embedding_batch_size)
    model.encode(texts[:64], batch_size=settings.index.embedding_batch_size)
    embeddings.embed_documents(texts[:64])

    encode_s, build_s = math.inf, math.inf
    for i in range(repeat):
        began = time.perf_counter()
        model.encode(texts, batch_size=settings.index.embedding_batch_size, normalize_embeddings=True)
        encode_s = min(encode_s, time.perf_counter() - began)
        index_dir = settings.index.index_dir.with_name(f"{settings.index.index_dir.name}-{label}-{i}")
        store = IndexStore(settings.updated(**{"index_dir": index_dir}), embeddings=embeddings)
        began = time.perf_counter()
        store.build()
        build_s = min(build_s, time.perf_counter() - began)
    return BuildResult(
        corpus=label,
        documents=len(docs),
        chunks=len(chunks),
        texts=len(texts),
        build_s=round(build_s, 3),
        encode_s=round(encode_s, 3),
        build_chunks_per_s=round(len(chunks) / build_s, 1),
        encode_chunks_per_s=round(len(chunks) / encode_s, 1),
        overhead=round(build_s / encode_s, 3),
    )
