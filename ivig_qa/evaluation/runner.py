"""Running a set: ask every item through the real ``Assistant``, score it, aggregate, check thresholds.

Every question goes through the same ``Assistant.ask`` the app uses (earlier turns first, the
history built as the app builds it). Each answer becomes a ``QuestionRecord`` (the checks in
``checks``), the records are aggregated into ``Metrics`` overall and per category (status
accuracy with false refusals and missed emergencies apart, recall, ALCE citation scores, key
facts, integrity, latency median and p95), and ``--fail-under`` thresholds are checked on them.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from ivig_qa.evaluation.baseline import (
    BASELINE_CHUNK_OVERLAP,
    BASELINE_CHUNK_SIZE,
    SMALL_K,
    BaselineRetriever,
)
from ivig_qa.evaluation.checks import (
    StatementResult,
    SupportChecker,
    evidence_cited,
    evidence_found,
    has_markup,
    judge_statement,
    key_facts,
    marker_problems,
    split_statements,
    unescaped_markup,
)
from ivig_qa.evaluation.concepts import ConceptRow, per_concept, reason_labels, reasons_on_wrong_status
from ivig_qa.evaluation.dataset import CATEGORIES, EvalItem, Evidence, SetItem, TextRange
from ivig_qa.evaluation.focus import LOWER_IS_BETTER as FOCUS_LOWER_IS_BETTER
from ivig_qa.evaluation.focus import FocusRecord, context_ranges, focus_metrics, score_focus
from ivig_qa.evaluation.generation import GenerationRecord, generation_metrics, generation_record
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.text import collapse_space, markers
from ivig_qa.types import Answer, Citation

if TYPE_CHECKING:
    from ivig_qa.assistant import Assistant
    from ivig_qa.settings import Settings

EXPECTED_STATUS: dict[str, str] = {
    "answer": "answered",
    "refuse_out_of_scope": "not_in_sources",
    "decline_personal_advice": "personal_advice",
    "urgent_care": "urgent_care",
}
REFUSAL_STATUSES = frozenset({"not_in_sources", "personal_advice"})

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------
# Records and metrics
# ---------------------------------------------------------------------------------------
class CitationRecord(BaseModel):
    """A citation as scored (the passage text is left out to keep the report small)."""

    n: int
    doc_id: str
    chunk_id: str
    start: int
    end: int
    quote: str
    verbatim: bool


class EvidenceRecord(BaseModel):
    text: str
    locations: list[str]
    retrieved: bool = Field(description="Within our top k_final passages.")
    retrieved_at_4: bool
    cited: bool
    baseline_at_4: bool | None = None


class QuestionRecord(BaseModel):
    """Everything measured for one set item; the metrics are computed from these alone."""

    id: str
    category: str
    line: int
    question: str
    turns: list[str]
    expect: str
    expected_status: str
    status: str
    status_ok: bool
    false_refusal: bool
    missed_emergency: bool
    standalone_question: str
    answer: str
    citations: list[CitationRecord]
    retrieved: list[str]
    baseline_retrieved: list[str] | None = None
    evidence: list[EvidenceRecord]
    counts_for_recall: bool = Field(description="Has evidence and expect=answer.")
    retrieval_recall: float | None
    retrieval_recall_at_4: float | None
    cited_recall: float | None
    baseline_retrieval_recall_at_4: float | None
    statements: list[StatementResult]
    uncited_sentences: int
    citation_recall: float | None
    citation_precision: float | None
    key_facts: list[bool]
    key_fact_coverage: float | None
    disclaimer_present: bool
    disclaimer_ok: bool
    quotes_verbatim: bool | None
    markers_ok: bool | None
    marker_problems: list[str]
    has_markup: bool
    markup_escaped: bool | None
    latency_ms: float | None
    first_token_ms: float | None = None  # streamed engines (LLM): time to the first generated token
    failures: list[str]
    focus: FocusRecord | None = Field(None, description="Quote precision, lead, length (focus.py).")
    # Triage breakdown (evaluation/concepts.py): the item's concept and the answer's reasons.
    concept: str = ""
    reasons: list[str] = Field(default_factory=list, description="The answer's reasons, as id@layer.")
    generation: GenerationRecord | None = Field(None, description="LLM engine: generated or why not.")


class Metrics(BaseModel):
    """Aggregates over a group of records (the whole set, or one category)."""

    n: int
    n_recall_items: int
    retrieval_recall: float | None = Field(description="Ours at k_final.")
    retrieval_recall_at_4: float | None
    baseline_retrieval_recall_at_4: float | None
    cited_recall: float | None
    retrieval_recall_non_answer: float | None = Field(description="Items with evidence but expect≠answer.")
    citation_recall: float | None
    citation_precision: float | None
    key_fact_coverage: float | None
    status_accuracy: float | None
    false_refusals: int
    false_refusal_rate: float | None
    missed_emergencies: int
    disclaimer_present: float | None
    disclaimer_constant: float | None = Field(description="1.0 when every answer carries DISCLAIMER exactly.")
    quotes_verbatim: float | None
    markers_resolve: float | None
    html_escaped: float | None
    latency_ms_median: float | None
    latency_ms_p95: float | None
    first_token_ms_median: float | None = None
    # -- focus (evaluation/focus.py): what is quoted needlessly, whether the answer leads ----------
    quote_precision: float | None = Field(None, description="Share of quoted sentences that are labelled.")
    lead_accuracy: float | None = Field(None, description="Share of answers whose first quote is relevant.")
    answer_words_median: float | None = None
    answer_words_p90: float | None = None
    context_quoted: int = Field(0, description="Quotes of a heading, title, byline or reference line.")
    # -- a generating engine (evaluation/generation.py), over expect=answer items -----------------
    fallback_rate: float | None = Field(None, description="Share answered by the extractive fallback.")
    kept_sentences_mean: float | None = None
    dropped_sentences_mean: float | None = None
    lead_ms_median: float | None = Field(None, description="From composing to the lead (first text).")


# Metrics a --fail-under threshold may name; for these lower is better.
LOWER_IS_BETTER = frozenset(
    {
        "false_refusals",
        "false_refusal_rate",
        "missed_emergencies",
        "latency_ms_median",
        "latency_ms_p95",
        "first_token_ms_median",
        "fallback_rate",
        "dropped_sentences_mean",
        "lead_ms_median",
    }
    | FOCUS_LOWER_IS_BETTER
)
THRESHOLD_METRICS = tuple(name for name in Metrics.model_fields if name not in {"n", "n_recall_items"})


class BaselineInfo(BaseModel):
    description: str
    chunk_size: int
    chunk_overlap: int
    k: int
    chunks: int


class EvalReport(BaseModel):
    """report.json: how the run was made, the metrics, and every per-question record."""

    set_file: str
    set_sha256: str
    created_at: str
    engine: str
    checker: str
    k_final: int
    index: dict[str, object]
    settings: dict[str, object]
    baseline: BaselineInfo | None
    metrics: Metrics
    per_category: dict[str, Metrics]
    records: list[QuestionRecord]
    # Triage breakdown (evaluation/concepts.py).
    per_concept: dict[str, ConceptRow] = Field(default_factory=dict)
    reasons_on_wrong_status: dict[str, int] = Field(default_factory=dict)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def _rate(flags: Iterable[bool | None]) -> float | None:
    return _mean(None if f is None else float(f) for f in flags)


def compute_metrics(records: Sequence[QuestionRecord]) -> Metrics:
    """Means over the records each metric applies to (``None`` where none applies)."""
    recall = [r for r in records if r.counts_for_recall]
    other = [r for r in records if r.evidence and not r.counts_for_recall]
    should_answer = [r for r in records if r.expect == "answer"]
    latencies = [r.latency_ms for r in records if r.latency_ms is not None]
    first_tokens = [r.first_token_ms for r in records if r.first_token_ms is not None]
    return Metrics(
        n=len(records),
        n_recall_items=len(recall),
        retrieval_recall=_mean(r.retrieval_recall for r in recall),
        retrieval_recall_at_4=_mean(r.retrieval_recall_at_4 for r in recall),
        baseline_retrieval_recall_at_4=_mean(r.baseline_retrieval_recall_at_4 for r in recall),
        cited_recall=_mean(r.cited_recall for r in recall),
        retrieval_recall_non_answer=_mean(r.retrieval_recall for r in other),
        citation_recall=_mean(r.citation_recall for r in records),
        citation_precision=_mean(r.citation_precision for r in records),
        key_fact_coverage=_mean(r.key_fact_coverage for r in records),
        status_accuracy=_rate(r.status_ok for r in records),
        false_refusals=sum(r.false_refusal for r in records),
        false_refusal_rate=_rate(r.false_refusal for r in should_answer),
        missed_emergencies=sum(r.missed_emergency for r in records),
        disclaimer_present=_rate(r.disclaimer_present for r in records),
        disclaimer_constant=(float(all(r.disclaimer_ok for r in records)) if records else None),
        quotes_verbatim=_rate(r.quotes_verbatim for r in records),
        markers_resolve=_rate(r.markers_ok for r in records),
        html_escaped=_rate(r.markup_escaped for r in records if r.has_markup),
        latency_ms_median=round(float(np.median(latencies)), 2) if latencies else None,
        latency_ms_p95=round(float(np.percentile(latencies, 95)), 2) if latencies else None,
        first_token_ms_median=round(float(np.median(first_tokens)), 2) if first_tokens else None,
        **focus_metrics(records),
        **generation_metrics(records),
    )


# ---------------------------------------------------------------------------------------
# Running a set
# ---------------------------------------------------------------------------------------
def _short(text: str, limit: int = 70) -> str:
    text = collapse_space(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fraction(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


class Evaluator:
    """Scores set items one at a time against the real assistant (and the baseline)."""

    def __init__(
        self,
        assistant: Assistant,
        documents: Mapping[str, str],
        checker: SupportChecker,
        baseline: BaselineRetriever | None = None,
    ) -> None:
        self.assistant = assistant
        self.documents = documents
        self.checker = checker
        self.baseline = baseline
        self.k_final = assistant.settings.retrieval.k_final
        self.contexts = context_ranges(assistant.settings.index.corpus_dir)

    def converse(self, item: SetItem) -> tuple[Answer, list[Answer]]:
        """Ask the earlier turns in order (building the history as the app does), then the question."""
        history: list[dict[str, str]] = []
        earlier: list[Answer] = []
        for turn in item.turns:
            answer = self.assistant.ask(turn, history)
            earlier.append(answer)
            history += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer.answer}]
        return self.assistant.ask(item.question, history), earlier

    def evaluate(self, loaded: EvalItem) -> QuestionRecord:
        item = loaded.item
        answer, earlier = self.converse(item)
        query = answer.standalone_question or item.question
        # Recall is scored on what a LangChain caller gets: the retriever's own ``invoke``.
        hits = sorted(self.assistant.retriever.invoke(query), key=lambda d: d.metadata["rank"])
        ours = [TextRange(d.metadata["doc_id"], d.metadata["start"], d.metadata["end"]) for d in hits]
        base = self.baseline.retrieve(item.question) if self.baseline else None
        evidence = [self._evidence(e, ours, base, answer.citations) for e in loaded.evidence]
        counts = bool(evidence) and item.expect == "answer"
        statements, uncited = split_statements(answer.answer)
        by_n = {c.n: c.quote or c.text for c in answer.citations}
        judged = [judge_statement(s, by_n, self.checker) for s in statements]
        facts = key_facts(item.must_include, answer.answer)
        citations = [self._citation(c) for c in answer.citations]
        problems = marker_problems(answer)
        all_answers = [*earlier, answer]
        markup = has_markup(item.question)
        expected = EXPECTED_STATUS[item.expect]
        status = answer.status.value
        record = QuestionRecord(
            id=item.id,
            category=item.category,
            line=loaded.line,
            question=item.question,
            turns=item.turns,
            expect=item.expect,
            expected_status=expected,
            status=status,
            status_ok=status == expected,
            false_refusal=item.expect == "answer" and status in REFUSAL_STATUSES,
            missed_emergency=item.expect == "urgent_care" and status != "urgent_care",
            standalone_question=answer.standalone_question,
            answer=answer.answer,
            citations=citations,
            retrieved=[str(d.id) for d in hits],
            baseline_retrieved=[f"{r.doc_id}@{r.start}" for r in base] if base is not None else None,
            evidence=evidence,
            counts_for_recall=counts,
            retrieval_recall=_fraction([e.retrieved for e in evidence]),
            retrieval_recall_at_4=_fraction([e.retrieved_at_4 for e in evidence]),
            cited_recall=_fraction([e.cited for e in evidence]),
            baseline_retrieval_recall_at_4=(
                _fraction([bool(e.baseline_at_4) for e in evidence]) if base is not None else None
            ),
            statements=judged,
            uncited_sentences=uncited,
            citation_recall=self._citation_recall(judged, status),
            citation_precision=self._citation_precision(judged),
            key_facts=facts,
            key_fact_coverage=_fraction(facts),
            disclaimer_present=all(a.disclaimer.strip() for a in all_answers),
            disclaimer_ok=all(a.disclaimer == DISCLAIMER for a in all_answers),
            quotes_verbatim=all(c.verbatim for c in citations) if citations else None,
            markers_ok=not problems if (answer.citations or markers(answer.answer)) else None,
            marker_problems=problems,
            has_markup=markup,
            markup_escaped=not unescaped_markup(item.question, answer.answer) if markup else None,
            latency_ms=answer.timings_ms.get("total"),
            first_token_ms=answer.timings_ms.get("llm_first_token"),
            failures=[],
            concept=item.concept,
            # The policy's reasons (the second opinion's included); dropped sentences are in generation.
            reasons=reason_labels([r for r in answer.reasons if not r.id.startswith("llm.dropped.")]),
            generation=generation_record(answer),
        )
        record.focus = score_focus(loaded, answer.answer, answer.citations, self.documents, self.contexts)
        record.failures = failure_reasons(record, item, self.k_final) + focus_failures(record)
        return record

    def _evidence(
        self,
        evidence: Evidence,
        ours: list[TextRange],
        base: list[TextRange] | None,
        citations: list[Citation],
    ) -> EvidenceRecord:
        return EvidenceRecord(
            text=evidence.text,
            locations=[f"{s.doc_id}:{s.start}-{s.end}" for s in evidence.spans],
            retrieved=evidence_found(evidence, ours[: self.k_final]),
            retrieved_at_4=evidence_found(evidence, ours[:SMALL_K]),
            cited=evidence_cited(evidence, citations),
            baseline_at_4=evidence_found(evidence, base) if base is not None else None,
        )

    def _citation(self, c: Citation) -> CitationRecord:
        source = self.documents.get(c.doc_id)
        verbatim = source is not None and source[c.start : c.end] == c.quote
        return CitationRecord(
            n=c.n,
            doc_id=c.doc_id,
            chunk_id=c.chunk_id,
            start=c.start,
            end=c.end,
            quote=c.quote,
            verbatim=verbatim,
        )

    @staticmethod
    def _citation_recall(judged: list[StatementResult], status: str) -> float | None:
        """Share of supported statements; an 'answered' answer citing nothing scores 0."""
        if judged:
            return sum(s.supported for s in judged) / len(judged)
        return 0.0 if status == "answered" else None

    @staticmethod
    def _citation_precision(judged: list[StatementResult]) -> float | None:
        flags = [p for s in judged for p in s.precise]
        return sum(flags) / len(flags) if flags else None


def failure_reasons(record: QuestionRecord, item: SetItem, k_final: int) -> list[str]:
    """Readable reasons a question is listed under failures in report.md."""
    out: list[str] = []
    if not record.status_ok:
        tag = " — false refusal" if record.false_refusal else ""
        tag = " — MISSED EMERGENCY" if record.missed_emergency else tag
        out.append(f"status {record.status} (expected {record.expected_status}){tag}")
    if record.counts_for_recall:
        out += [
            f"evidence not retrieved in top {k_final}: “{_short(e.text)}”"
            for e in record.evidence
            if not e.retrieved
        ]
        out += [f"evidence not cited: “{_short(e.text)}”" for e in record.evidence if not e.cited]
    out += [
        f"statement not supported by [{', '.join(map(str, s.cites))}]: “{_short(s.text)}”"
        for s in record.statements
        if not s.supported
    ]
    out += [
        f"citation [{n}] not needed for “{_short(s.text, 40)}”"
        for s in record.statements
        if s.supported
        for n, ok in zip(s.cites, s.precise, strict=True)
        if not ok
    ]
    if record.status == "answered" and not record.statements:
        out.append("answered without any cited statement")
    out += [
        f"missing key fact: {' / '.join(group)}"
        for group, ok in zip(item.must_include, record.key_facts, strict=True)
        if not ok
    ]
    if not record.disclaimer_present:
        out.append("disclaimer missing")
    elif not record.disclaimer_ok:
        out.append("disclaimer differs from guardrails.DISCLAIMER")
    out += [
        f"quote [{c.n}] is not verbatim at {c.doc_id}:{c.start}-{c.end}"
        for c in record.citations
        if not c.verbatim
    ]
    out += record.marker_problems
    if record.markup_escaped is False:
        out.append(
            f"unescaped markup in the answer: {', '.join(unescaped_markup(item.question, record.answer))}"
        )
    return out


def focus_failures(record: QuestionRecord) -> list[str]:
    """Focus problems listed under failures: a heading quoted, an answer not led by its answer."""
    focus = record.focus
    if focus is None:
        return []
    out = [f"quote [{n}] is a heading, title or byline, not a statement" for n in focus.context_quoted]
    if focus.lead_relevant is False and record.status == "answered":
        out.append("the first quote does not answer the question")
    return out


def _redacted_settings(settings: Settings) -> dict[str, object]:
    """Settings as used, minus secrets (the report may be shared)."""
    data = settings.model_dump(mode="json")
    if data.get("api_key"):
        data["api_key"] = "***"
    return data


def run_evaluation(
    assistant: Assistant,
    items: Sequence[EvalItem],
    documents: Mapping[str, str],
    *,
    set_file: Path,
    checker: SupportChecker,
    baseline: BaselineRetriever | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Ask every item and aggregate overall and per category (in the canonical order)."""
    evaluator = Evaluator(assistant, documents, checker, baseline)
    records: list[QuestionRecord] = []
    for done, loaded in enumerate(items, start=1):
        records.append(evaluator.evaluate(loaded))
        if progress:
            progress(done, len(items), loaded.item.id)
    per_category = {
        cat: compute_metrics([r for r in records if r.category == cat])
        for cat in CATEGORIES
        if any(r.category == cat for r in records)
    }
    manifest = assistant.manifest
    return EvalReport(
        set_file=str(set_file),
        set_sha256=hashlib.sha256(set_file.read_bytes()).hexdigest(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        engine=assistant.engine.name,
        checker=checker.name,
        k_final=assistant.settings.retrieval.k_final,
        index={
            "version": manifest.version,
            "embedding_model": manifest.embedding_model,
            "chunker": manifest.chunker,
        },
        settings=_redacted_settings(assistant.settings),
        baseline=(
            BaselineInfo(
                description=baseline.description,
                chunk_size=BASELINE_CHUNK_SIZE,
                chunk_overlap=BASELINE_CHUNK_OVERLAP,
                k=baseline.k,
                chunks=baseline.chunks,
            )
            if baseline
            else None
        ),
        metrics=compute_metrics(records),
        per_category=per_category,
        records=records,
        per_concept=per_concept(records),
        reasons_on_wrong_status=reasons_on_wrong_status(records),
    )


# ---------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """``--fail-under METRIC=VALUE``: scores must reach VALUE; counts/latencies must not exceed it."""

    metric: str
    value: float

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def missed(self, metrics: Metrics) -> str | None:
        """Why the threshold is missed, or None when it holds."""
        actual = getattr(metrics, self.metric)
        if actual is None:
            return f"{self.metric}: not measured on this run (threshold {self.value:g})"
        if self.lower_is_better and actual > self.value:
            return f"{self.metric} = {actual:g} is above the limit {self.value:g}"
        if not self.lower_is_better and actual < self.value:
            return f"{self.metric} = {actual:g} is below {self.value:g}"
        return None


def parse_threshold(spec: str) -> Threshold:
    """Parse ``METRIC=VALUE``; ValueError names the known metrics on a typo."""
    name, sep, raw = spec.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"--fail-under expects METRIC=VALUE, got {spec!r}")
    if name not in THRESHOLD_METRICS:
        raise ValueError(f"unknown metric {name!r} in --fail-under (known: {', '.join(THRESHOLD_METRICS)})")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--fail-under {name}: {raw!r} is not a number") from None
    return Threshold(name, value)


def missed_thresholds(metrics: Metrics, thresholds: Iterable[Threshold]) -> list[str]:
    return [why for t in thresholds if (why := t.missed(metrics))]
