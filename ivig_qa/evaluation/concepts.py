"""Per-concept and per-reason breakdowns of a run, so a miss points at its cause.

Set items may name the red-flag concept they probe (``concept``: a catalogue id such as
``chest_pain``, or ``mild.headache``); every answer carries the reasons behind its status
(rule or concept ids and the layer that fired). This module groups the records by concept
(status accuracy, missed emergencies, needless urgent care, false refusals, which layer caught
the emergencies) and counts the reasons behind every wrong status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from ivig_qa.evaluation.runner import QuestionRecord
    from ivig_qa.types import Reason

NO_CONCEPT = "(none)"


class ConceptRow(BaseModel):
    """One concept's items: how their statuses came out, and which layer caught the emergencies."""

    n: int
    status_accuracy: float
    missed_emergencies: int
    needless_urgent: int = Field(description="Sent to urgent care though not expected there.")
    false_refusals: int
    caught_by: dict[str, int] = Field(
        default_factory=dict,
        description="Urgent answers by the layers whose reasons fired (pattern, semantic).",
    )


def reason_labels(reasons: Sequence[Reason]) -> list[str]:
    """``id@layer`` for each reason (as report.json keeps them)."""
    return [f"{r.id}@{r.layer}" for r in reasons]


def _layers(labels: Sequence[str]) -> str:
    urgent = sorted({label.rsplit("@", 1)[1] for label in labels if label.startswith("urgent.")})
    return "+".join(urgent) or "none"


def per_concept(records: Sequence[QuestionRecord]) -> dict[str, ConceptRow]:
    """Rows for every concept named by the set (items without one under ``(none)``), sorted by id;
    empty when the set names no concept."""
    if not any(r.concept for r in records):
        return {}
    groups: dict[str, list[QuestionRecord]] = {}
    for r in records:
        groups.setdefault(r.concept or NO_CONCEPT, []).append(r)
    rows: dict[str, ConceptRow] = {}
    for concept in sorted(groups):
        group = groups[concept]
        caught = Counter(_layers(r.reasons) for r in group if r.status == "urgent_care")
        rows[concept] = ConceptRow(
            n=len(group),
            status_accuracy=round(sum(r.status_ok for r in group) / len(group), 4),
            missed_emergencies=sum(r.missed_emergency for r in group),
            needless_urgent=sum(
                r.status == "urgent_care" and r.expected_status != "urgent_care" for r in group
            ),
            false_refusals=sum(r.false_refusal for r in group),
            caught_by=dict(sorted(caught.items())),
        )
    return rows


def reasons_on_wrong_status(records: Sequence[QuestionRecord]) -> dict[str, int]:
    """How often each reason (``id@layer``) came with a wrong status, most frequent first."""
    counts = Counter(label for r in records if not r.status_ok for label in r.reasons)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def markdown_sections(concepts: dict[str, ConceptRow], wrong: dict[str, int], table: object) -> list[str]:
    """The report.md sections: a per-concept table and the reasons behind wrong statuses.

    ``table`` is report.py's markdown table helper (header, rows) -> str.
    """
    if not concepts:
        return []
    rows = [
        [
            name,
            str(c.n),
            f"{c.status_accuracy:.3f}",
            str(c.missed_emergencies),
            str(c.needless_urgent),
            str(c.false_refusals),
            ", ".join(f"{k} {v}" for k, v in c.caught_by.items()) or "—",
        ]
        for name, c in concepts.items()
    ]
    header = [
        "concept",
        "n",
        "status acc.",
        "missed emergencies",
        "needless urgent",
        "false refusals",
        "urgent by layer",
    ]
    parts = ["## Per concept", "", table(header, rows), "", "## Reasons behind wrong statuses", ""]  # type: ignore[operator]
    if wrong:
        parts.append(table(["reason (id@layer)", "wrong statuses"], [[k, str(v)] for k, v in wrong.items()]))  # type: ignore[operator]
    else:
        parts.append("None.")
    return [*parts, ""]
