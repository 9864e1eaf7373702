"""What a generating engine (``--engine llm``) did per answer: generated or fell back (and why),
which generated sentences it dropped and for what reason, and how fast its parts came.

``generation_record`` reads one ``Answer``; ``generation_metrics`` aggregates records (the
report's fallback rate per category); ``dropped_table`` counts the reasons over a set.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from ivig_qa.engines.llm.verify import PROBLEM_CODES
from ivig_qa.types import Answer

_FALLBACK = re.compile(r"^extractive \(llm (fallback|skipped): (.+)\)$")


class GenerationRecord(BaseModel):
    """One answer of a generating engine."""

    generated: bool = Field(description="The answer leads with a verified generated summary.")
    fallback_reason: str | None = Field(None, description="Why the extractive engine answered instead.")
    kept_sentences: int = 0
    dropped: list[str] = Field(default_factory=list, description="Reason code per dropped sentence.")
    dropped_detail: list[str] = Field(default_factory=list, description="Reason and sentence, per drop.")
    judge_calls: int = 0
    lead_ms: float | None = Field(None, description="From composing to the lead (first visible text).")
    first_token_ms: float | None = None


def generation_record(answer: Answer) -> GenerationRecord | None:
    """The record for an answer of the LLM engine (None for the extractive engine's own)."""
    engine = answer.engine or ""
    fell = _FALLBACK.match(engine)
    if not engine.startswith("llm:") and not fell:
        return None
    t = answer.timings_ms
    drops = [r for r in answer.reasons if r.layer == "llm" and r.id.startswith("llm.dropped.")]
    return GenerationRecord(
        generated=engine.startswith("llm:"),
        fallback_reason=fell.group(2) if fell else None,
        kept_sentences=int(t.get("kept_sentences", 0)),
        dropped=[r.id.removeprefix("llm.dropped.") for r in drops],
        dropped_detail=[r.detail for r in drops],
        judge_calls=int(t.get("judge_calls", 0)),
        lead_ms=t.get("llm_lead"),
        first_token_ms=t.get("llm_first_token"),
    )


def generation_metrics(records: Sequence[BaseModel]) -> dict[str, float | None]:
    """Fallback rate over the answerable items (expect=answer) that the policy answered and the
    generating engine wrote, sentences kept and dropped per answer, and the median lead time.

    An answerable question the policy sent elsewhere (urgent care gets the quotes only) is the
    policy's mistake, counted by status accuracy, not a fallback of the engine.
    """
    answered = [
        r
        for r in records
        if getattr(r, "generation", None) is not None and r.expect == "answer" and r.status == "answered"
    ]
    if not answered:
        return {}
    gens: list[GenerationRecord] = [r.generation for r in answered]
    leads = [g.lead_ms for g in gens if g.lead_ms is not None]
    return {
        "fallback_rate": round(sum(not g.generated for g in gens) / len(gens), 4),
        "kept_sentences_mean": round(float(np.mean([g.kept_sentences for g in gens])), 3),
        "dropped_sentences_mean": round(float(np.mean([len(g.dropped) for g in gens])), 3),
        "lead_ms_median": round(float(np.median(leads)), 2) if leads else None,
    }


def dropped_table(records: Sequence[BaseModel]) -> list[list[str]]:
    """Rows: reason code, what it means, dropped sentences, answers it touched, fallbacks too."""
    gens = [r.generation for r in records if getattr(r, "generation", None) is not None]
    sentences = Counter(code for g in gens for code in g.dropped)
    answers = Counter(code for g in gens for code in set(g.dropped))
    fallbacks = Counter(g.fallback_reason for g in gens if g.fallback_reason)
    rows = [
        [f"`{code}`", PROBLEM_CODES.get(code, code), str(n), str(answers[code])]
        for code, n in sentences.most_common()
    ]
    rows += [
        [f"fallback: {why}", "the extractive engine answered", "—", str(n)] for why, n in fallbacks.items()
    ]
    return rows
