"""Evaluation: run a question set through the real ``Assistant`` and score what it says.

An operator has to show that every answer says only what its sources say, cites the right
passages and handles the questions it must not answer. This module loads a JSONL question
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
* optionally the retrieval recall of the LangChain RAG-tutorial pipeline, as a baseline.

The report is written as Markdown (for people), JSON (for machines) and a PNG chart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich import box
from rich.table import Table

from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.types import Answer, Citation

if TYPE_CHECKING:
    from langchain_chroma import Chroma

    from ivig_qa.assistant import Assistant
    from ivig_qa.settings import Settings

Category = Literal[
    "factual", "multi_doc", "follow_up", "adversarial", "out_of_scope", "personal_advice", "emergency"
]
Expect = Literal["answer", "refuse_out_of_scope", "decline_personal_advice", "urgent_care"]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
EXPECTS: tuple[str, ...] = Expect.__args__  # type: ignore[attr-defined]

EXPECTED_STATUS: dict[str, str] = {
    "answer": "answered",
    "refuse_out_of_scope": "not_in_sources",
    "decline_personal_advice": "personal_advice",
    "urgent_care": "urgent_care",
}
REFUSAL_STATUSES = frozenset({"not_in_sources", "personal_advice"})
SMALL_K = 4  # the baseline's top-k; ours is also reported at this k for a fair comparison
BASELINE_CHUNK_SIZE = 1000
BASELINE_CHUNK_OVERLAP = 200

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------
# The question set
# ---------------------------------------------------------------------------------------
class SetItem(BaseModel):
    """One line of a question set (see docs/design.md); unknown keys are typos, so rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    category: Category
    question: str
    turns: list[str]
    expected_docs: list[str]
    evidence: list[str]
    must_include: list[list[str]]
    expect: Expect
    reference_answer: str = ""


@dataclass(frozen=True)
class TextRange:
    """A half-open character range in one document's original text."""

    doc_id: str
    start: int
    end: int

    def overlap(self, other: TextRange) -> int:
        if self.doc_id != other.doc_id:
            return 0
        return max(0, min(self.end, other.end) - max(self.start, other.start))

    def contains(self, other: TextRange) -> bool:
        return self.doc_id == other.doc_id and self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Evidence:
    """A gold evidence string and every place it occurs in the item's expected documents."""

    text: str
    spans: tuple[TextRange, ...]


@dataclass(frozen=True)
class EvalItem:
    """A validated set item with its line number and its evidence located in the corpus."""

    item: SetItem
    line: int
    evidence: tuple[Evidence, ...]


class EvalSetError(Exception):
    """The set cannot be evaluated; every message names the file and line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _describe(error: Mapping) -> str:
    """A pydantic error as an operator reads it ("missing key 'id'", "unknown category …")."""
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"missing key {loc!r}"
    if kind == "extra_forbidden":
        return f"unknown key {loc!r}"
    if kind == "literal_error" and loc == "category":
        return f"unknown category {error['input']!r} (expected one of: {', '.join(CATEGORIES)})"
    if kind == "literal_error" and loc == "expect":
        return f"unknown expect {error['input']!r} (expected one of: {', '.join(EXPECTS)})"
    return f"{loc}: {error['msg']}"


def locate(text: str, needle: str, doc_id: str) -> list[TextRange]:
    """Every exact occurrence of ``needle`` (no whitespace or NBSP normalisation)."""
    out: list[TextRange] = []
    at = text.find(needle)
    while needle and at >= 0:
        out.append(TextRange(doc_id, at, at + len(needle)))
        at = text.find(needle, at + 1)
    return out


def _check_item(item: SetItem, documents: Mapping[str, str]) -> tuple[list[str], tuple[Evidence, ...]]:
    """Problems a schema cannot see: unknown documents, evidence not in them, empty follow-ups."""
    problems = [
        f"expected document {d!r} is not in the corpus" for d in item.expected_docs if d not in documents
    ]
    if item.category == "follow_up" and not item.turns:
        problems.append("follow_up item has no earlier 'turns'")
    if item.evidence and not item.expected_docs:
        problems.append("evidence given but no expected_docs to find it in")
    located: list[Evidence] = []
    for text in item.evidence:
        spans = [s for d in item.expected_docs if d in documents for s in locate(documents[d], text, d)]
        if not spans:
            short = text if len(text) <= 80 else text[:77] + "..."
            problems.append(f"evidence not found verbatim in {item.expected_docs}: {short!r}")
        located.append(Evidence(text, tuple(spans)))
    return problems, tuple(located)


def load_set(path: Path, documents: Mapping[str, str]) -> list[EvalItem]:
    """Read and validate a JSONL set; raise ``EvalSetError`` listing every bad line."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalSetError([f"{path}: cannot read the question set ({exc})"]) from exc
    errors: list[str] = []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(f"{path}:{no}: malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(data, dict):
            errors.append(f"{path}:{no}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            item = SetItem.model_validate(data)
        except ValidationError as exc:
            errors.extend(f"{path}:{no}: {_describe(e)}" for e in exc.errors())
            continue
        problems, evidence = _check_item(item, documents)
        if item.id in seen:
            problems.append(f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen.setdefault(item.id, no)
        errors.extend(f"{path}:{no}: {p}" for p in problems)
        items.append(EvalItem(item, no, evidence))
    if not errors and not items:
        errors.append(f"{path}: no questions in the set")
    if errors:
        raise EvalSetError(errors)
    return items


def load_documents(corpus_dir: Path) -> dict[str, str]:
    """Original text of every corpus document by doc_id: the offsets citations point into."""
    from ivig_qa.corpus import load_corpus

    return {d.doc_id: d.text for d in load_corpus(corpus_dir).documents}


# ---------------------------------------------------------------------------------------
# Support checking (ALCE citation recall / precision)
# ---------------------------------------------------------------------------------------
class SupportChecker(Protocol):
    """Decides whether passages support a statement (an NLI model or an LLM judge can too)."""

    name: str

    def supports(self, statement: str, passages: list[str]) -> bool: ...


_WORD = re.compile(r"[a-z0-9]+(?:[.,/'][a-z0-9]+)*")


def normalise_space(text: str) -> str:
    """Collapse all whitespace (NBSP included) so line wrapping never decides support."""
    return " ".join(text.split())


class VerbatimSupportChecker:
    """Supported when the statement is quoted from the passages (or nearly: token overlap).

    Right for the extractive engine, whose statements are verbatim quotes; a paraphrasing
    engine needs a model-based judge instead.
    """

    name = "verbatim"

    def __init__(self, min_overlap: float = 0.9) -> None:
        self.min_overlap = min_overlap

    def supports(self, statement: str, passages: list[str]) -> bool:
        claim = normalise_space(statement)
        source = normalise_space(" ".join(passages))
        if not claim or not source:
            return False
        if claim in source:
            return True
        tokens = _WORD.findall(claim.lower())
        known = set(_WORD.findall(source.lower()))
        return bool(tokens) and sum(t in known for t in tokens) / len(tokens) >= self.min_overlap


def _llm_checker() -> SupportChecker:
    """The LLM engine's own verification (numbers, names, words, then the model's yes/no)."""
    from ivig_qa.engines.llm import LLMSupportChecker

    return LLMSupportChecker.from_settings()


SUPPORT_CHECKERS: dict[str, Callable[[], SupportChecker]] = {
    "verbatim": VerbatimSupportChecker,
    "llm": _llm_checker,
}


def make_checker(name: str) -> SupportChecker:
    """The support checker registered under ``name`` (ValueError lists the known ones)."""
    try:
        return SUPPORT_CHECKERS[name]()
    except KeyError:
        raise ValueError(f"unknown support checker {name!r} (known: {', '.join(SUPPORT_CHECKERS)})") from None


_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_STRIP_MARKER = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"[.!?][\"”’)]*(?:\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s+[A-Z0-9\"“(])")


@dataclass(frozen=True)
class Statement:
    """One bullet or sentence of an answer with the citation numbers it carries."""

    text: str
    cites: tuple[int, ...]


def markers(text: str) -> list[int]:
    """Every citation number referenced in a text, in order (``[1]``, ``[1, 2]``)."""
    return [int(n) for group in _MARKER.findall(text) for n in group.split(",")]


def _sentences(line: str) -> list[str]:
    """Split prose at sentence ends, keeping a marker after the full stop with its sentence."""
    parts, last = [], 0
    for m in _SENTENCE_END.finditer(line):
        parts.append(line[last : m.end()])
        last = m.end()
    parts.append(line[last:])
    return [p.strip() for p in parts if p.strip()]


def _is_framing(unit: str) -> bool:
    """Headings and lead-ins ("Here is what the sources say:") state nothing to support."""
    bare = unit.strip()
    return bare.startswith("#") or bare.endswith(":") or (bare.startswith("**") and bare.endswith("**"))


def split_statements(answer_text: str) -> tuple[list[Statement], int]:
    """The cited statements of an answer, and how many uncited sentences it also has."""
    statements: list[Statement] = []
    uncited = 0
    for line in answer_text.splitlines():
        if not line.strip():
            continue
        bullet = _BULLET.match(line)
        units = [line[bullet.end() :]] if bullet else _sentences(line)
        for unit in units:
            cites = tuple(markers(unit))
            clean = normalise_space(_STRIP_MARKER.sub("", unit).replace("**", ""))
            if cites:
                statements.append(Statement(clean, cites))
            elif clean and not _is_framing(unit):
                uncited += 1
    return statements, uncited


class StatementResult(BaseModel):
    """ALCE judgement of one statement: supported by its citations, and which were needed."""

    text: str
    cites: list[int]
    supported: bool
    precise: list[bool] = Field(description="Per cite: counted as precise in ALCE's sense.")


def judge_statement(
    statement: Statement, by_n: Mapping[int, str], checker: SupportChecker
) -> StatementResult:
    """ALCE: recall = the cited passages jointly support it; a cite is imprecise when it
    does not support the statement alone *and* the others still do without it."""
    cites = list(statement.cites)
    if not cites or any(n not in by_n for n in cites):
        return StatementResult(
            text=statement.text, cites=cites, supported=False, precise=[False] * len(cites)
        )
    supported = checker.supports(statement.text, [by_n[n] for n in cites])
    if not supported:
        return StatementResult(
            text=statement.text, cites=cites, supported=False, precise=[False] * len(cites)
        )
    if len(cites) == 1:
        return StatementResult(text=statement.text, cites=cites, supported=True, precise=[True])
    precise = []
    for n in cites:
        alone = checker.supports(statement.text, [by_n[n]])
        rest = [by_n[m] for m in cites if m != n]
        precise.append(alone or not checker.supports(statement.text, rest))
    return StatementResult(text=statement.text, cites=cites, supported=True, precise=precise)


# ---------------------------------------------------------------------------------------
# Per-question checks
# ---------------------------------------------------------------------------------------
def evidence_found(evidence: Evidence, ranges: Sequence[TextRange]) -> bool:
    """Found when the ranges together cover at least half of one occurrence of the evidence."""
    for span in evidence.spans:
        covered = _covered_chars(span, ranges)
        if covered * 2 >= span.end - span.start:
            return True
    return False


def _covered_chars(span: TextRange, ranges: Iterable[TextRange]) -> int:
    """Characters of ``span`` inside the union of ``ranges`` (overlapping chunks count once)."""
    pieces = sorted((max(r.start, span.start), min(r.end, span.end)) for r in ranges if r.overlap(span) > 0)
    total, reach = 0, span.start
    for start, end in pieces:
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def evidence_cited(evidence: Evidence, citations: Sequence[Citation]) -> bool:
    """Cited when the quotes cover half the evidence, or a quote lies inside the evidence."""
    quotes = [TextRange(c.doc_id, c.start, c.end) for c in citations]
    return evidence_found(evidence, quotes) or any(s.contains(q) for s in evidence.spans for q in quotes)


def key_facts(groups: Sequence[Sequence[str]], text: str) -> list[bool]:
    """Each group is satisfied when any alternative appears (case- and spacing-insensitive)."""
    hay = normalise_space(text).casefold()
    return [any(normalise_space(alt).casefold() in hay for alt in group) for group in groups]


def marker_problems(answer: Answer) -> list[str]:
    """Markers without a citation and citations no marker references."""
    used = set(markers(answer.answer))
    numbers = {c.n for c in answer.citations}
    problems = [f"marker [{n}] has no citation" for n in sorted(used - numbers)]
    problems += [f"citation [{n}] is never referenced" for n in sorted(numbers - used)]
    return problems


_TAG = re.compile(r"<\s*/?\s*([a-zA-Z][a-zA-Z0-9-]*)")
_ALWAYS_FORBIDDEN = ("<script", "onerror=")


def has_markup(question: str) -> bool:
    """The question carries HTML, so an answer echoing it unescaped would be an XSS vector."""
    return bool(_TAG.search(question)) or "onerror=" in question.lower()


def unescaped_markup(question: str, answer_text: str) -> list[str]:
    """Raw markup from the question (``<script``, ``onerror=``, its tags) found in the answer."""
    needles = set(_ALWAYS_FORBIDDEN) | {f"<{tag.lower()}" for tag in _TAG.findall(question)}
    low = answer_text.lower()
    return sorted(n for n in needles if n in low)


# ---------------------------------------------------------------------------------------
# The baseline: the LangChain RAG tutorial's retrieval
# ---------------------------------------------------------------------------------------
class BaselineRetriever:
    """What a newcomer builds from the LangChain RAG tutorial: 1000/200 character chunks of
    the raw file texts, the same embedding model, an in-memory Chroma, similarity top-4."""

    description = (
        f"LangChain RAG tutorial: RecursiveCharacterTextSplitter({BASELINE_CHUNK_SIZE}/"
        f"{BASELINE_CHUNK_OVERLAP}) over raw texts, same embeddings, ephemeral Chroma, top-{SMALL_K}, "
        "queried with the question as typed (no follow-up rewriting)"
    )

    def __init__(self, store: Chroma, chunks: int, k: int = SMALL_K) -> None:
        self.store = store
        self.chunks = chunks
        self.k = k

    @classmethod
    def build(
        cls, documents: Mapping[str, str], embedding_model: str, batch_size: int = 64
    ) -> BaselineRetriever:
        """Split, embed and index the raw texts (the same cached model the index uses)."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from langchain_chroma import Chroma
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from ivig_qa.embeddings import load_embeddings

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=BASELINE_CHUNK_SIZE, chunk_overlap=BASELINE_CHUNK_OVERLAP, add_start_index=True
        )
        ids = sorted(documents)
        splits = splitter.create_documents(
            [documents[d] for d in ids], metadatas=[{"doc_id": d} for d in ids]
        )
        client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
        store = Chroma(
            client=client,
            collection_name=f"eval-baseline-{uuid.uuid4().hex[:12]}",
            embedding_function=load_embeddings(embedding_model, batch_size),
        )
        store.add_documents(splits)
        return cls(store, len(splits))

    def retrieve(self, question: str) -> list[TextRange]:
        hits = self.store.similarity_search(question, k=self.k)
        return [
            TextRange(
                h.metadata["doc_id"],
                h.metadata["start_index"],
                h.metadata["start_index"] + len(h.page_content),
            )
            for h in hits
        ]

    def close(self) -> None:
        """Drop the temporary collection (the ephemeral client lives as long as the process)."""
        self.store.delete_collection()


# ---------------------------------------------------------------------------------------
# Records, metrics and the report
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


# Metrics a --fail-under threshold may name; for these lower is better.
LOWER_IS_BETTER = frozenset(
    {
        "false_refusals",
        "false_refusal_rate",
        "missed_emergencies",
        "latency_ms_median",
        "latency_ms_p95",
        "first_token_ms_median",
    }
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
    )


# ---------------------------------------------------------------------------------------
# Running a set
# ---------------------------------------------------------------------------------------
def _short(text: str, limit: int = 70) -> str:
    text = normalise_space(text)
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
        self.k_final = assistant.settings.k_final

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
        passages = sorted(self.assistant.retrieve(query).passages, key=lambda p: p.rank)
        ours = [TextRange(p.chunk.doc_id, p.chunk.start, p.chunk.end) for p in passages]
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
            retrieved=[p.chunk.chunk_id for p in passages],
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
        )
        record.failures = failure_reasons(record, item, self.k_final)
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
        k_final=assistant.settings.k_final,
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


# ---------------------------------------------------------------------------------------
# Writing the report
# ---------------------------------------------------------------------------------------
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
        "## Integrity and latency per category",
        "",
        _md_table(
            ["category", "n", *[label for _, label in checks]],
            [[name, str(x.n), *[fmt(getattr(x, k)) for k, _ in checks]] for name, x in _rows(report)],
        ),
        "",
        "## Failures",
        "",
    ]
    failing = [r for r in report.records if r.failures]
    if not failing:
        parts.append("None.")
    for r in failing:
        parts.append(f"- **`{r.id}`** ({r.category}, line {r.line}, status `{r.status}`)")
        parts += [f"  - {why}" for why in r.failures]
    return "\n".join(parts) + "\n"


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
    checks = Table(title="Checks — overall", box=box.SIMPLE_HEAD, padding=(0, 1))
    checks.add_column("check", style="bold")
    checks.add_column("value", justify="right")
    for key, label in _columns(report, CHECK_COLUMNS):
        checks.add_row(label, fmt(getattr(report.metrics, key)))
    return [scores, checks]


def write_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars of the per-category scores (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(report, SCORE_COLUMNS)
    rows = _rows(report)
    width = 0.8 / len(cols)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(rows)), 4.8))
    for i, (key, label) in enumerate(cols):
        values = [getattr(m, key) for _, m in rows]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, [name for name, _ in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{Path(report.set_file).name} — engine {report.engine}")
    ax.legend(fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


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
