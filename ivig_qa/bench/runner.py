"""``ivig-qa bench``: how fast the assistant is, measured the way it runs, against targets.

Five measurements, each on a private index built in a temporary folder so the operator's
index is never touched:

* **answer latency** per stage (``Answer.timings_ms``) over the evaluation questions, warm;
* **HTTP throughput** at several concurrencies against a real ``ivig-qa serve`` process on
  a free loopback port (a fixed number of requests, rate limit off through Settings);
* **cold start**: a fresh Python process that opens the index and answers one question;
* **index build throughput** on the bundled corpus and on a generated corpus of at least
  10,000 chunks, next to the bare sentence-transformers encode of the same texts (the
  physical limit), so the pipeline's own overhead is visible;
* **peak memory** (RSS high-water mark) of the server process.

The process helpers (free ports, a ``chroma run`` server, an ``ivig-qa serve`` process)
are in :mod:`ivig_qa.testing`, shared with the tests that need real servers.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import math
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from ivig_qa.settings import Settings
from ivig_qa.testing import AppServer, quiet_env, settings_env

Step = Callable[[str], None]
STAGES = ("condense", "retrieve", "compose", "guard", "total")
COLD_START_QUESTION = "How often is IVIG given?"


# --- targets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One goal from the issue: ``value <= limit`` (or ``>=`` when ``at_least``)."""

    name: str
    limit: float
    unit: str
    at_least: bool = False

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS = {
    "answer_median": Target("extractive answer median (warm)", 50, "ms"),
    "answer_p95": Target("extractive answer p95 (warm)", 150, "ms"),
    "http_throughput": Target("HTTP answers/s at concurrency 16", 40, "answers/s", at_least=True),
    "http_errors": Target("HTTP errors at concurrency 16", 0, "errors"),
    "cold_start": Target("cold start to first answer (median)", 6, "s"),
    "build_overhead": Target("index build time / raw encode time", 1.25, "×"),
    "server_rss": Target("server peak RSS", 1200, "MB"),
}


# --- results ------------------------------------------------------------------------------------
@dataclass
class Stats:
    """A latency distribution in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Stats:
        if not samples_ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        a = np.asarray(samples_ms, dtype=float)
        p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
        mean, top = float(a.mean()), float(a.max())
        return cls(len(a), *(round(v, 2) for v in (p50, p95, p99, mean, top)))


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


@dataclass
class TargetCheck:
    name: str
    target: str
    value: float
    unit: str
    met: bool


@dataclass
class Environment:
    cpus: int
    torch_threads: int
    load_before: list[float]
    load_after: list[float]
    python: str
    platform: str
    started_at: str
    seconds: float


@dataclass
class BenchReport:
    environment: Environment
    latency: LatencyResult | None
    server: ServerResult | None
    cold_start: ColdStartResult | None
    builds: list[BuildResult]
    targets: list[TargetCheck]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


@dataclass
class BenchConfig:
    """What to run (the CLI's options)."""

    questions_file: Path = Path("eval/questions.jsonl")
    rounds: int = 2
    requests: int = 400
    concurrency: tuple[int, ...] = (1, 4, 16)
    cold_runs: int = 3
    scaled_chunks: int = 10_000
    profile: bool = True


# --- corpora ----------------------------------------------------------------------------------------
def load_questions(path: Path) -> list[str]:
    """The ``question`` field of every line of an evaluation set."""
    lines = path.read_text("utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def _vary(text: str, copy: int) -> str:
    """Make every sentence of a copy distinct, so no two copies embed the same text."""
    return re.sub(r"(?<=[a-z0-9])\.(?=\s+[A-Z])", f" (copy {copy}).", text)


def scale_corpus(src: Path, dst: Path, min_chunks: int, chunk_settings: Settings) -> int:
    """Write enough varied copies of the corpus in ``src`` to ``dst`` for ``min_chunks`` chunks.

    Each copy gets its own file names, titles (in sources.toml) and sentence text.
    Returns the number of copies.
    """
    from ivig_qa.chunking import chunk_corpus
    from ivig_qa.corpus import load_corpus, read_sources
    from ivig_qa.index import IndexStore

    docs = load_corpus(src).documents
    per_copy = len(chunk_corpus(docs, IndexStore(chunk_settings).chunker_settings()))
    copies = max(1, math.ceil(min_chunks / max(1, per_copy) * 1.02))
    sources = read_sources(src)
    dst.mkdir(parents=True, exist_ok=True)
    toml_lines: list[str] = []
    for k in range(1, copies + 1):
        for doc in docs:
            stem = f"{doc.doc_id}-copy{k:04d}"
            (dst / f"{stem}{Path(doc.path).suffix}").write_text(_vary(doc.text, k), "utf-8")
            meta = dict(sources.get(doc.doc_id, {}))
            meta["title"] = f"{doc.title} (copy {k})"
            toml_lines.append(f"[{json.dumps(stem)}]")
            toml_lines += [f"{key} = {json.dumps(value)}" for key, value in meta.items()]
    (dst / "sources.toml").write_text("\n".join(toml_lines) + "\n", "utf-8")
    read_sources(dst)  # fail here, not in the build
    return copies


# --- measurements -------------------------------------------------------------------------------
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
    settings_env: dict[str, str], questions: list[str], config: BenchConfig, work: Path, step: Step
) -> ServerResult:
    """Start ``ivig-qa serve``, load it at each concurrency, and read its memory high-water mark."""
    with AppServer(settings_env, work / "serve.log") as server:
        step(f"server ready in {server.ready_s:.1f} s on {server.url}")
        asyncio.run(_load(server.url, questions, 4, 20))  # warm connections and threads
        levels = []
        for c in config.concurrency:
            step(f"HTTP load: {config.requests} requests at concurrency {c}")
            levels.append(asyncio.run(_load(server.url, questions, c, config.requests)))
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
    """A from-scratch build of ``settings.corpus_dir`` beside the bare encode of the same texts.

    The model is loaded and warmed before either clock starts; each gets the best of
    ``repeat`` runs (builds write to a fresh folder every time).
    """
    from sentence_transformers import SentenceTransformer

    from ivig_qa.chunking import chunk_corpus
    from ivig_qa.corpus import load_corpus
    from ivig_qa.embeddings import load_embeddings, resolve_model_path, use_torch_threads
    from ivig_qa.index import IndexStore, embedding_texts

    docs = load_corpus(settings.corpus_dir).documents
    chunks = chunk_corpus(docs, IndexStore(settings).chunker_settings())
    texts = embedding_texts(chunks)
    model = SentenceTransformer(str(resolve_model_path(settings.embedding_model)), device="cpu")
    use_torch_threads(settings.build_threads)  # the bare encode gets the threads a build gets
    embeddings = load_embeddings(settings.embedding_model, settings.embedding_batch_size)
    model.encode(texts[:64], batch_size=settings.embedding_batch_size)
    embeddings.embed_documents(texts[:64])

    encode_s, build_s = math.inf, math.inf
    for i in range(repeat):
        began = time.perf_counter()
        model.encode(texts, batch_size=settings.embedding_batch_size, normalize_embeddings=True)
        encode_s = min(encode_s, time.perf_counter() - began)
        index_dir = settings.index_dir.with_name(f"{settings.index_dir.name}-{label}-{i}")
        store = IndexStore(settings.model_copy(update={"index_dir": index_dir}), embeddings=embeddings)
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


# --- the whole run ---------------------------------------------------------------------------
def run_bench(settings: Settings, config: BenchConfig, step: Step = lambda _m: None) -> BenchReport:
    """Every measurement, in an order that keeps them from disturbing each other."""
    began, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = [round(x, 2) for x in os.getloadavg()]
    questions = load_questions(config.questions_file)
    builds: list[BuildResult] = []
    with _workdir() as work:
        # A private local index; no rate limit, so the load test measures answers, not 429s.
        local = settings.model_copy(
            update={
                "index_dir": work / "index",
                "feedback_db": work / "feedback.sqlite3",
                "corpus_dir": settings.corpus_dir.resolve(),
                "chroma_url": None,
                "rate_limit_per_minute": 0,
            }
        )
        step("building the bundled corpus (and encoding its texts bare)")
        builds.append(measure_build(local.model_copy(update={"index_dir": work / "b"}), "bundled", repeat=3))
        from ivig_qa.index import IndexStore

        IndexStore(local).build()
        step(f"answer latency: {len(questions)} questions × {config.rounds}")
        latency = measure_latency(local, questions, config.rounds, config.profile)
        env = settings_env(local)
        step(f"cold start: {config.cold_runs} fresh processes")
        cold = measure_cold_start(env, config.cold_runs)
        server = measure_server(env, questions, config, work, step)
        if config.scaled_chunks > 0:
            scaled = work / "scaled-corpus"
            copies = scale_corpus(settings.corpus_dir, scaled, config.scaled_chunks, settings)
            step(f"building a scaled corpus ({copies} copies, ≥ {config.scaled_chunks} chunks)")
            big = local.model_copy(update={"corpus_dir": scaled, "index_dir": work / "s"})
            builds.append(measure_build(big, f"scaled ×{copies}"))
    environment = _environment(started_at, load_before, time.perf_counter() - began)
    report = BenchReport(environment, latency, server, cold, builds, [])
    report.targets = check_targets(report)
    return report


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ivig-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _environment(started_at: str, load_before: list[float], seconds: float) -> Environment:
    import torch

    return Environment(
        cpus=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        load_before=load_before,
        load_after=[round(x, 2) for x in os.getloadavg()],
        python=platform.python_version(),
        platform=platform.platform(),
        started_at=started_at,
        seconds=round(seconds, 1),
    )


def check_targets(report: BenchReport) -> list[TargetCheck]:
    """Each measured value beside its target from the issue."""
    values: dict[str, float] = {}
    if report.latency:
        values["answer_median"] = report.latency.stage("total").median_ms
        values["answer_p95"] = report.latency.stage("total").p95_ms
    if report.server and (top := report.server.level(16)):
        values["http_throughput"] = top.answers_per_s
        values["http_errors"] = top.errors
    if report.server:
        values["server_rss"] = report.server.peak_rss_mb
    if report.cold_start:
        values["cold_start"] = report.cold_start.median_s
    if report.builds:
        values["build_overhead"] = report.builds[-1].overhead
    checks = []
    for key, value in values.items():
        t = TARGETS[key]
        op = "≥" if t.at_least else "≤"
        checks.append(TargetCheck(t.name, f"{op} {t.limit:g} {t.unit}", value, t.unit, t.met(value)))
    return checks


# --- output -----------------------------------------------------------------------------------------
@dataclass
class Table:
    """One results table, rendered both by rich (the terminal) and as Markdown (the committed file)."""

    title: str
    header: list[str]
    rows: list[list[str]]


def tables(report: BenchReport) -> list[Table]:
    """Every table of the report, targets first."""
    out = [_targets_table(report.targets)]
    if report.latency:
        out.append(_latency_table(report.latency))
    if report.server:
        out += _server_tables(report.server)
    if report.cold_start:
        out.append(_cold_table(report.cold_start))
    if report.builds:
        out.append(_build_table(report.builds))
    if report.latency and report.latency.profile:
        out.append(_profile_table(report.latency.profile))
    return out


def _targets_table(checks: list[TargetCheck]) -> Table:
    rows = [[t.name, t.target, f"{t.value:g} {t.unit}", "yes" if t.met else "**no**"] for t in checks]
    return Table("Targets", ["target", "goal", "measured", "met"], rows)


def _latency_table(lat: LatencyResult) -> Table:
    rows = [[s.stage, *(f"{v:.1f}" for v in _stat_values(s.stats))] for s in lat.stages]
    title = f"Warm answer latency, ms ({lat.questions} questions × {lat.rounds})"
    return Table(title, ["stage", "median", "p95", "p99", "mean", "max"], rows)


def _stat_values(s: Stats) -> tuple[float, ...]:
    return (s.median_ms, s.p95_ms, s.p99_ms, s.mean_ms, s.max_ms)


def _server_tables(srv: ServerResult) -> list[Table]:
    header = ["concurrency", "requests", "errors", "answers/s", "median ms", "p95 ms", "p99 ms"]
    rows = [
        [str(lv.concurrency), str(lv.requests), str(lv.errors), f"{lv.answers_per_s:.1f}"]
        + [f"{v:.1f}" for v in (lv.latency.median_ms, lv.latency.p95_ms, lv.latency.p99_ms)]
        for lv in srv.levels
    ]
    memory = [[f"{srv.ready_s:.1f} s", f"{srv.peak_rss_mb:.0f} MB", f"{srv.rss_after_mb:.0f} MB"]]
    return [
        Table("HTTP POST /api/ask (ivig-qa serve, loopback)", header, rows),
        Table("Server process", ["start → ready", "peak RSS", "RSS after load"], memory),
    ]


def _cold_table(cold: ColdStartResult) -> Table:
    header = ["run", "spawn → answer", "startup", "imports", "open index", "first answer", "(exit after)"]
    rows = [
        [str(i + 1)]
        + [f"{v:.2f}" for v in (r.total_s, r.startup_s, r.imports_s, r.open_index_s, r.first_answer_s)]
        + [f"{r.exit_s:.2f}"]
        for i, r in enumerate(cold.runs)
    ]
    return Table("Cold start: fresh process → first answer, s", header, rows)


def _build_table(builds: list[BuildResult]) -> Table:
    header = ["corpus", "docs", "chunks", "texts", "build s", "encode s"]
    header += ["build chunks/s", "encode chunks/s", "build/encode"]
    rows = [
        [
            b.corpus,
            *(str(n) for n in (b.documents, b.chunks, b.texts)),
            *(f"{v:.2f}" for v in (b.build_s, b.encode_s)),
            *(f"{v:.0f}" for v in (b.build_chunks_per_s, b.encode_chunks_per_s)),
            f"{b.overhead:.2f}×",
        ]
        for b in builds
    ]
    return Table("Index build vs bare encode of the same texts (chunks + sentences)", header, rows)


def _profile_table(profile: list[ProfileEntry]) -> Table:
    rows = [
        [p.function, f"{p.calls_per_answer:g}", f"{p.self_ms:.2f}", f"{p.cumulative_ms:.2f}"] for p in profile
    ]
    title = "Where answering spends its time (cProfile: top self time, per answer)"
    return Table(title, ["function", "calls", "self ms", "cumulative ms"], rows)


def to_markdown(report: BenchReport) -> str:
    env = report.environment
    lines = [
        "# ivig-qa benchmark",
        "",
        f"{env.started_at} · {env.cpus} CPUs (torch threads: {env.torch_threads}) · Python {env.python} · "
        f"load average {env.load_before[0]:.1f} before, {env.load_after[0]:.1f} after · {env.seconds:.0f} s",
        "",
        "Produced by `ivig-qa bench`; the raw numbers are in `bench.json`.",
    ]
    for t in tables(report):
        lines += ["", f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + " --- |" * len(t.header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def write_report(report: BenchReport, out: Path) -> list[Path]:
    """``bench.json`` and ``bench.md`` in ``out`` (written whole, then renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("bench.json", report.to_json() + "\n"), ("bench.md", to_markdown(report))):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths
