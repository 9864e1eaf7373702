"""The goals from the issue, and each measured value of a report checked against its goal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ivig_qa.bench.runner import BenchReport


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
    "llm_lead": Target("LLM engine: first visible text, the lead (median, warm)", 500, "ms"),
    "llm_told_first_text": Target(
        "LLM engine: first visible text of a symptom told, after the second opinion (median, warm)", 500, "ms"
    ),
    "llm_first_token": Target("LLM engine: summary first token (median, warm)", 3000, "ms"),
    "llm_full": Target("LLM engine: full verified answer (median, warm)", 8000, "ms"),
}


@dataclass
class TargetCheck:
    name: str
    target: str
    value: float
    unit: str
    met: bool


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
    if report.llm:
        values["llm_lead"] = report.llm.lead.median_ms
        if report.llm.told_first_text is not None:
            values["llm_told_first_text"] = report.llm.told_first_text.median_ms
        values["llm_first_token"] = report.llm.summary_first_token.median_ms
        values["llm_full"] = report.llm.full.median_ms
    checks = []
    for key, value in values.items():
        t = TARGETS[key]
        op = "≥" if t.at_least else "≤"
        checks.append(TargetCheck(t.name, f"{op} {t.limit:g} {t.unit}", value, t.unit, t.met(value)))
    return checks
