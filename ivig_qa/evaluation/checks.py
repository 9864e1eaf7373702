"""Per-answer checks: support checkers, statement splitting, evidence, citation, marker and markup checks.

* ALCE-style citation recall and precision (Gao et al., 2023) of each cited statement, behind a
  ``SupportChecker`` (verbatim overlap for the extractive engine, the LLM engine's own judge);
* evidence found / cited, matched by location: the retrieved chunks (or the cited quotes) must
  cover at least half of the gold evidence's characters;
* key facts, ``[n]`` markers that resolve, no unescaped markup echoed from the question.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, Field

from ivig_qa.evaluation.dataset import Evidence, TextRange
from ivig_qa.text import answer_sentences, collapse_space, markers
from ivig_qa.types import Answer, Citation


class SupportChecker(Protocol):
    """Decides whether passages support a statement (an NLI model or an LLM judge can too)."""

    name: str

    def supports(self, statement: str, passages: list[str]) -> bool: ...


# Not text.TOKEN: commas and apostrophes stay inside a term ("1,000", "don't"), no stop words
# or stems, so "1,000" never matches a passage that only says "1" and "000".
_OVERLAP_TERM = re.compile(r"[a-z0-9]+(?:[.,/'][a-z0-9]+)*")


class VerbatimSupportChecker:
    """Supported when the statement is quoted from the passages (or nearly: token overlap).

    Right for the extractive engine, whose statements are verbatim quotes; a paraphrasing
    engine needs a model-based judge instead.
    """

    name = "verbatim"

    def __init__(self, min_overlap: float = 0.9) -> None:
        self.min_overlap = min_overlap

    def supports(self, statement: str, passages: list[str]) -> bool:
        claim = collapse_space(statement)
        source = collapse_space(" ".join(passages))
        if not claim or not source:
            return False
        if claim in source:
            return True
        tokens = _OVERLAP_TERM.findall(claim.lower())
        known = set(_OVERLAP_TERM.findall(source.lower()))
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


# Exactly the markers text.markers counts (not text.CITE, which also takes "[ 1 ]" and "[1; 2]"),
# so a statement loses from its text only the markers it is credited with.
_STRIP_MARKER = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")


@dataclass(frozen=True)
class Statement:
    """One bullet or sentence of an answer with the citation numbers it carries."""

    text: str
    cites: tuple[int, ...]


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
        units = [line[bullet.end() :]] if bullet else answer_sentences(line)
        for unit in units:
            cites = tuple(markers(unit))
            clean = collapse_space(_STRIP_MARKER.sub("", unit).replace("**", ""))
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
        covered = covered_chars(span, ranges)
        if covered * 2 >= span.end - span.start:
            return True
    return False


def covered_chars(span: TextRange, ranges: Iterable[TextRange]) -> int:
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
    hay = collapse_space(text).casefold()
    return [any(collapse_space(alt).casefold() in hay for alt in group) for group in groups]


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
