"""Writing an ``EvalReport``: report.md (people), report.json (machines), a PNG chart, terminal tables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich import box
from rich.table import Table

from ivig_qa.evaluation.concepts import markdown_sections
from ivig_qa.evaluation.generation import dropped_table
from ivig_qa.evaluation.runner import EvalReport, Metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SCORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("status_accuracy", "status acc."),
    ("retrieval_recall", "recall@k"),
    ("retrieval_recall_at_4", "recall@4"),
    ("baseline_retrieval_recall_at_4", "baseline@4"),
    ("cited_recall", "cited recall"),
    ("citation_recall", "citation recall"),
    ("citation_precision", "citation prec."),
    ("key_fact_coverage", "key facts"),
)
CHECK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("false_refusals", "false refusals"),
    ("missed_emergencies", "missed emergencies"),
    ("disclaimer_present", "disclaimer present"),
    ("disclaimer_constant", "disclaimer constant"),
    ("quotes_verbatim", "quotes verbatim"),
    ("markers_resolve", "markers resolve"),
    ("html_escaped", "HTML escaped"),
    ("latency_ms_median", "latency p50 ms"),
    ("latency_ms_p95", "latency p95 ms"),
    ("first_token_ms_median", "first token p50 ms"),
)
# Focus (evaluation/focus.py): shown beside evidence recall and key facts, which pull against it.
FOCUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("quote_precision", "quote prec."),
    ("lead_accuracy", "lead acc."),
    ("answer_words_median", "words p50"),
    ("answer_words_p90", "words p90"),
    ("cited_recall", "cited recall"),
    ("key_fact_coverage", "key facts"),
    ("context_quoted", "headings quoted"),
)
# A generating engine (evaluation/generation.py): shown only when one answered.
GENERATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fallback_rate", "fallback rate"),
    ("kept_sentences_mean", "kept / answer"),
    ("dropped_sentences_mean", "dropped / answer"),
    ("key_fact_coverage", "key facts"),
    ("citation_recall", "citation recall"),
    ("citation_precision", "citation prec."),
    ("answer_words_median", "words p50"),
    ("lead_ms_median", "lead p50 ms"),
    ("first_token_ms_median", "first token p50 ms"),
    ("latency_ms_median", "latency p50 ms"),
)


def fmt(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if value <= 1.0 else f"{value:.1f}"


def _columns(report: EvalReport, columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Hide the baseline column when no baseline ran; name k after k_final."""
    out = []
    for key, label in columns:
        if key == "baseline_retrieval_recall_at_4" and report.baseline is None:
            continue
        out.append((key, label.replace("@k", f"@{report.k_final}")))
    return out


def _rows(report: EvalReport) -> list[tuple[str, Metrics]]:
    return [*report.per_category.items(), ("overall", report.metrics)]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: EvalReport) -> str:
    """report.md: overall, per-category and integrity tables, then every failing question."""
    m = report.metrics
    scores = _columns(report, SCORE_COLUMNS)
    checks = _columns(report, CHECK_COLUMNS)
    overall_rows = [[label, fmt(getattr(m, key))] for key, label in scores + checks]
    overall_rows.append(
        ["recall on non-answer items (evidence, expect≠answer)", fmt(m.retrieval_recall_non_answer)]
    )
    overall_rows.append(["false refusal rate (of expect=answer)", fmt(m.false_refusal_rate)])
    parts = [
        f"# Evaluation report — `{report.set_file}`",
        "",
        f"- created: {report.created_at}",
        f"- engine: `{report.engine}` · support checker: `{report.checker}` · k_final: {report.k_final}",
        f"- index: version `{report.index.get('version')}`, model `{report.index.get('embedding_model')}`",
        f"- questions: {m.n} ({m.n_recall_items} with evidence and expect=answer count for recall)",
    ]
    if report.baseline:
        parts.append(f"- baseline: {report.baseline.description} ({report.baseline.chunks} chunks)")
    parts += [
        "",
        "Recall is matched by location: gold evidence counts as found when the retrieved chunks "
        "(or the cited quotes) cover at least half of its characters.",
        "",
        "## Overall",
        "",
        _md_table(["metric", "value"], overall_rows),
        "",
        "## Per category",
        "",
        _md_table(
            ["category", "n", *[label for _, label in scores]],
            [[name, str(x.n), *[fmt(getattr(x, k)) for k, _ in scores]] for name, x in _rows(report)],
        ),
        "",
        "## Focus per category",
        "",
        "Quote precision: share of quoted sentences labelled relevant or supporting; lead: the first "
        "quote is a relevant one; words: the answer text as shown (expect=answer items).",
        "",
        _md_table(
            ["category", "n", *[label for _, label in FOCUS_COLUMNS]],
            [[name, str(x.n), *[fmt(getattr(x, k)) for k, _ in FOCUS_COLUMNS]] for name, x in _rows(report)],
        ),
        "",
        "## Integrity and latency per category",
        "",
        _md_table(
            ["category", "n", *[label for _, label in checks]],
            [[name, str(x.n), *[fmt(getattr(x, k)) for k, _ in checks]] for name, x in _rows(report)],
        ),
        "",
    ]
    parts += _generation_section(report)
    parts += markdown_sections(report.per_concept, report.reasons_on_wrong_status, _md_table)
    parts += ["## Failures", ""]
    failing = [r for r in report.records if r.failures]
    if not failing:
        parts.append("None.")
    for r in failing:
        parts.append(f"- **`{r.id}`** ({r.category}, line {r.line}, status `{r.status}`)")
        parts += [f"  - {why}" for why in r.failures]
        if not r.status_ok and r.reasons:
            parts.append(f"  - reasons: {', '.join(f'`{x}`' for x in r.reasons)}")
    return "\n".join(parts) + "\n"


def _generation_section(report: EvalReport) -> list[str]:
    """The generating engine's part: fallback rate per category, the reasons sentences were
    dropped (counted), and each dropped sentence with its reason."""
    if report.metrics.fallback_rate is None:
        return []
    rows = [(name, x) for name, x in _rows(report) if x.fallback_rate is not None]
    parts = [
        "## The generated answer (LLM engine)",
        "",
        "Over expect=answer items the policy answered (status `answered`): fallback rate (the "
        "extractive engine answered instead), generated "
        "sentences kept and dropped per answer, the lead (first visible text, from composing) and the "
        "summary's first token.",
        "",
        _md_table(
            ["category", "n", *[label for _, label in GENERATION_COLUMNS]],
            [[name, str(x.n), *[fmt(getattr(x, k)) for k, _ in GENERATION_COLUMNS]] for name, x in rows],
        ),
        "",
        "### Why generated sentences were dropped",
        "",
    ]
    table = dropped_table(report.records)
    header = ["reason", "meaning", "sentences", "answers"]
    parts.append(_md_table(header, table) if table else "None dropped.")
    parts.append("")
    details = [(r, d) for r in report.records if r.generation for d in r.generation.dropped_detail]
    if details:
        parts += ["<details><summary>Every dropped sentence</summary>", ""]
        parts += [f"- `{r.id}`: {d}" for r, d in details]
        parts += ["", "</details>", ""]
    return parts


# Short headers for the terminal (report.md spells them out).
SHORT_LABELS = {
    "status_accuracy": "status",
    "retrieval_recall": "rec@k",
    "retrieval_recall_at_4": "rec@4",
    "baseline_retrieval_recall_at_4": "base@4",
    "cited_recall": "cited",
    "citation_recall": "cit.R",
    "citation_precision": "cit.P",
    "key_fact_coverage": "facts",
}


def summary_tables(report: EvalReport) -> list[Table]:
    """What a run prints: per-category scores (ours next to the baseline), then overall checks."""
    cols = _columns(report, [(k, SHORT_LABELS[k]) for k, _ in SCORE_COLUMNS])
    scores = Table(
        title=f"Scores — {Path(report.set_file).name} ({report.engine})",
        caption="rec = evidence recall of retrieval, base = LangChain-tutorial baseline, cited = evidence "
        "recall of the citations, cit.R/P = ALCE citation recall/precision, facts = key-fact coverage",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
    )
    scores.add_column("category", style="bold", no_wrap=True)
    scores.add_column("n", justify="right", no_wrap=True)
    for key, label in cols:
        style = "cyan" if key.startswith("baseline") else None
        scores.add_column(label, justify="right", style=style, no_wrap=True)
    last = list(report.per_category)[-1]
    for name, x in _rows(report):
        scores.add_row(name, str(x.n), *[fmt(getattr(x, k)) for k, _ in cols], end_section=name == last)
    focus = _focus_table(report)
    checks = Table(title="Checks — overall", box=box.SIMPLE_HEAD, padding=(0, 1))
    checks.add_column("check", style="bold")
    checks.add_column("value", justify="right")
    for key, label in _columns(report, CHECK_COLUMNS):
        checks.add_row(label, fmt(getattr(report.metrics, key)))
    return [scores, focus, checks]


FOCUS_SHORT = {
    "quote_precision": "prec",
    "lead_accuracy": "lead",
    "answer_words_median": "w50",
    "answer_words_p90": "w90",
    "cited_recall": "cited",
    "key_fact_coverage": "facts",
    "context_quoted": "head",
}


def _focus_table(report: EvalReport) -> Table:
    """Per-category focus beside cited recall and key facts."""
    table = Table(
        title="Focus",
        caption="prec = labelled share of quoted sentences, lead = first quote relevant, w50/w90 = answer "
        "words p50/p90, head = headings or bylines quoted",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
    )
    table.add_column("category", style="bold", no_wrap=True)
    for key, _ in FOCUS_COLUMNS:
        table.add_column(FOCUS_SHORT[key], justify="right", no_wrap=True)
    for name, x in _rows(report):
        if name != "overall" and x.quote_precision is None:
            continue
        table.add_row(name, *[fmt(getattr(x, k)) for k, _ in FOCUS_COLUMNS])
    return table


def write_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars of the per-category scores (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(report, SCORE_COLUMNS)
    rows = _rows(report)
    width = 0.8 / len(cols)
    x = np.arange(len(rows))
    fig, (ax, focus_ax) = plt.subplots(
        2, 1, figsize=(max(8.0, 1.6 * len(rows)), 8.4), gridspec_kw={"height_ratios": [1.15, 1]}
    )
    for i, (key, label) in enumerate(cols):
        values = [getattr(m, key) for _, m in rows]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, [name for name, _ in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{Path(report.set_file).name} — engine {report.engine}")
    ax.legend(fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    _focus_panel(focus_ax, report)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _focus_panel(ax: Axes, report: EvalReport) -> None:
    """Quote precision and lead accuracy (bars, left axis) and answer words p50/p90 (right axis)."""
    rows = [(name, m) for name, m in _rows(report) if m.quote_precision is not None or name == "overall"]
    x = np.arange(len(rows))
    for i, (key, label) in enumerate((("quote_precision", "quote precision"), ("lead_accuracy", "lead"))):
        heights = [np.nan if getattr(m, key) is None else getattr(m, key) for _, m in rows]
        ax.bar(x + (i - 0.5) * 0.3, heights, 0.3, label=label)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_xticks(x, [name for name, _ in rows], rotation=20, ha="right")
    words = ax.twinx()
    for key, label, style in (
        ("answer_words_median", "words p50", "o-"),
        ("answer_words_p90", "words p90", "s--"),
    ):
        words.plot(
            x,
            [np.nan if getattr(m, key) is None else getattr(m, key) for _, m in rows],
            style,
            label=label,
            color="black",
        )
    words.set_ylim(0, max([m.answer_words_p90 or 0 for _, m in rows] + [100]) * 1.1)
    words.set_ylabel("answer words")
    handles = [*ax.get_legend_handles_labels()[0], *words.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title("focus: quote precision, lead accuracy, answer length")


REPORT_FILES = ("report.md", "report.json", "categories.png")


def report_paths(out: Path) -> tuple[Path, Path, Path]:
    """``eval/reports/latest.md`` → latest.md/.json/.png side by side; a folder → REPORT_FILES in it."""
    if out.suffix == ".md":
        return out, out.with_suffix(".json"), out.with_suffix(".png")
    md, js, png = (out / name for name in REPORT_FILES)
    return md, js, png


def write_report(report: EvalReport, out: Path) -> list[Path]:
    """Write the three files next to each other; each appears whole or not at all."""
    md, js, png = report_paths(out)
    md.parent.mkdir(parents=True, exist_ok=True)
    tmp = {p: p.with_name(f".{p.name}.tmp") for p in (md, js, png)}
    tmp[md].write_text(render_markdown(report), "utf-8")
    tmp[js].write_text(
        json.dumps(report.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    write_chart(report, tmp[png])
    for final, partial in tmp.items():
        os.replace(partial, final)
    return [md, js, png]
