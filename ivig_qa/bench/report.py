"""The report written out: its tables (terminal and Markdown), ``bench.md`` and ``bench.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ivig_qa.bench.llm import LLMLatencyResult
from ivig_qa.bench.measure import (
    BuildResult,
    ColdStartResult,
    LatencyResult,
    ProfileEntry,
    ServerResult,
    Stats,
)
from ivig_qa.bench.targets import TargetCheck

if TYPE_CHECKING:
    from ivig_qa.bench.runner import BenchReport


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
    if report.llm:
        out.append(_llm_table(report.llm))
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


def _llm_table(llm: LLMLatencyResult) -> Table:
    rows = [
        [name, str(s.n), f"{s.median_ms:.0f}", f"{s.p90_ms:.0f}"]
        for name, s in (
            ("first visible text (the lead)", llm.lead),
            ("summary first token", llm.summary_first_token),
            ("full verified answer", llm.full),
        )
    ]
    if llm.told_first_text is not None:
        s = llm.told_first_text
        name = f"first visible text, a symptom told ({llm.told_asked} read by the second opinion)"
        rows.append([name, str(s.n), f"{s.median_ms:.0f}", f"{s.p90_ms:.0f}"])
    answered = ", ".join(f"{e}: {n}" for e, n in sorted(llm.engines.items()))
    title = f"LLM engine `{llm.model}`, warm, ms ({llm.questions} questions × {llm.rounds}; {answered})"
    return Table(title, ["from the question sent to", "n", "median", "p90"], rows)


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


def to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2, ensure_ascii=False)


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
    for name, text in (("bench.json", to_json(report) + "\n"), ("bench.md", to_markdown(report))):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths
