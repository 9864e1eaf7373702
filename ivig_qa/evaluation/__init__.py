"""Evaluation: run a question set through the real ``Assistant`` and score what it says.

An operator has to show that every answer says only what its sources say, cites the right
passages and handles the questions it must not answer. The package loads a JSONL question
set (validated up front, so a bad line is reported with its line number before anything
runs), asks every question through the same ``Assistant.ask`` the app uses, and measures:

* retrieval evidence recall@k and cited evidence recall, matched by *location*: each gold
  evidence string is located in its document's original text and counts as found when the
  retrieved chunks (or the cited quotes) cover at least half of its characters;
* ALCE-style citation recall and precision (Gao et al., 2023) behind a ``SupportChecker``;
* key-fact coverage, status accuracy (with false refusals and missed emergencies apart);
* integrity checks: the fixed disclaimer, quotes verbatim at their offsets, ``[n]`` markers
  that resolve, no unescaped markup echoed from an adversarial question;
* latency (median and p95 of ``timings_ms["total"]``);
* focus against hand labels: quote precision, lead accuracy, answer length, headings quoted;
* optionally the retrieval recall of the LangChain RAG-tutorial pipeline, as a baseline.

The report is written as Markdown (for people), JSON (for machines) and a PNG chart.

Modules, one job each: ``dataset`` (the set: schema, loading, validation, evidence location),
``checks`` (support checkers and per-answer checks), ``focus`` (focus against the labels),
``baseline`` (the LangChain-tutorial retriever), ``runner`` (asking, scoring, metrics,
thresholds), ``report`` (writing the report), ``fit_ranker`` (fitting ``data/ranker.toml``).
The names below are the ones ``ivig-qa eval`` (cli.py) and the tests use.
"""

from ivig_qa.evaluation.baseline import BaselineRetriever
from ivig_qa.evaluation.checks import (
    SUPPORT_CHECKERS,
    Statement,
    VerbatimSupportChecker,
    evidence_found,
    judge_statement,
    make_checker,
    split_statements,
    unescaped_markup,
)
from ivig_qa.evaluation.dataset import (
    EvalSetError,
    Evidence,
    TextRange,
    load_documents,
    load_set,
)
from ivig_qa.evaluation.report import REPORT_FILES, summary_tables, write_report
from ivig_qa.evaluation.runner import (
    Evaluator,
    compute_metrics,
    missed_thresholds,
    parse_threshold,
    run_evaluation,
)

__all__ = [
    "REPORT_FILES",
    "SUPPORT_CHECKERS",
    "BaselineRetriever",
    "EvalSetError",
    "Evaluator",
    "Evidence",
    "Statement",
    "TextRange",
    "VerbatimSupportChecker",
    "compute_metrics",
    "evidence_found",
    "judge_statement",
    "load_documents",
    "load_set",
    "make_checker",
    "missed_thresholds",
    "parse_threshold",
    "run_evaluation",
    "split_statements",
    "summary_tables",
    "unescaped_markup",
    "write_report",
]
