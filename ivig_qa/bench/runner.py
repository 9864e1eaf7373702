"""One benchmark run: every measurement, on a private index, into one report checked against the targets."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ivig_qa.bench.corpora import load_questions, scale_corpus
from ivig_qa.bench.llm import LLMLatencyResult, measure_llm
from ivig_qa.bench.measure import (
    BuildResult,
    ColdStartResult,
    LatencyResult,
    ServerResult,
    Step,
    measure_build,
    measure_cold_start,
    measure_latency,
    measure_server,
)
from ivig_qa.bench.targets import TargetCheck, check_targets
from ivig_qa.settings import Settings
from ivig_qa.testing import settings_env


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
    llm: LLMLatencyResult | None = None


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
    # The LLM engine (when its extra is installed): a few answerable questions, warm; 0 = skip.
    llm_questions_file: Path = Path("eval/llm_questions.jsonl")
    llm_questions: int = 5
    # …and a few messages telling of a mild symptom now (the second opinion reads them first).
    llm_told: int = 5


def run_bench(settings: Settings, config: BenchConfig, step: Step = lambda _m: None) -> BenchReport:
    """Every measurement, in an order that keeps them from disturbing each other."""
    began, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = _load_average()
    questions = load_questions(config.questions_file)
    builds: list[BuildResult] = []
    with _workdir() as work:
        # A private local index; no rate limit, so the load test measures answers, not 429s.
        local = settings.updated(
            **{
                "index_dir": work / "index",
                "feedback_db": work / "feedback.sqlite3",
                "corpus_dir": settings.index.corpus_dir.resolve(),
                "chroma_url": None,
                "rate_limit_per_minute": 0,
            }
        )
        step("building the bundled corpus (and encoding its texts bare)")
        builds.append(measure_build(local.updated(**{"index_dir": work / "b"}), "bundled", repeat=3))
        from ivig_qa.index import IndexStore

        IndexStore(local).build()
        step(f"answer latency: {len(questions)} questions × {config.rounds}")
        latency = measure_latency(local, questions, config.rounds, config.profile)
        llm = None
        if config.llm_questions > 0 and config.llm_questions_file.is_file():
            asked = load_questions(config.llm_questions_file)[: config.llm_questions]
            told = mild_symptoms_told()[: config.llm_told]
            step(f"LLM engine latency: {len(asked)} questions and {len(told)} symptoms told, warm")
            llm = measure_llm(local, asked, told=told)
        env = settings_env(local)
        step(f"cold start: {config.cold_runs} fresh processes")
        cold = measure_cold_start(env, config.cold_runs)
        server = measure_server(env, questions, config.concurrency, config.requests, work, step)
        if config.scaled_chunks > 0:
            scaled = work / "scaled-corpus"
            copies = scale_corpus(settings.index.corpus_dir, scaled, config.scaled_chunks, settings)
            step(f"building a scaled corpus ({copies} copies, ≥ {config.scaled_chunks} chunks)")
            big = local.updated(**{"corpus_dir": scaled, "index_dir": work / "s"})
            builds.append(measure_build(big, f"scaled ×{copies}"))
    environment = _environment(started_at, load_before, time.perf_counter() - began)
    report = BenchReport(environment, latency, server, cold, builds, [], llm)
    report.targets = check_targets(report)
    return report


def mild_symptoms_told() -> list[str]:
    """One lay description per mild concept of the red-flag catalogue ("my arm is a bit tender
    where the drip was"): a symptom told as happening now, which the second opinion reads."""
    from ivig_qa.policy.red_flags import Catalogue

    return [c.descriptions[0] for c in Catalogue.load().concepts if not c.urgent and c.descriptions]


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
        load_after=_load_average(),
        python=platform.python_version(),
        platform=platform.platform(),
        started_at=started_at,
        seconds=round(seconds, 1),
    )


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
