"""Per-concept and per-reason breakdowns of an evaluation run (evaluation/concepts.py)."""

from __future__ import annotations

from ivig_qa.evaluation.concepts import markdown_sections, per_concept, reasons_on_wrong_status
from ivig_qa.evaluation.report import _md_table
from ivig_qa.evaluation.runner import QuestionRecord


def _record(concept: str, expected: str, status: str, reasons: list[str]) -> QuestionRecord:
    return QuestionRecord.model_construct(
        concept=concept,
        expected_status=expected,
        status=status,
        status_ok=status == expected,
        missed_emergency=expected == "urgent_care" and status != "urgent_care",
        false_refusal=expected == "answered" and status in ("not_in_sources", "personal_advice"),
        reasons=reasons,
    )


RECORDS = [
    _record("stroke", "urgent_care", "urgent_care", ["urgent.stroke@pattern", "triage.now@pattern"]),
    _record("stroke", "urgent_care", "urgent_care", ["urgent.stroke@semantic", "triage.unsure@pattern"]),
    _record("stroke", "urgent_care", "answered", ["scope.covered@scope"]),
    _record("mild.headache", "answered", "urgent_care", ["urgent.meningitis@semantic", "triage.now@pattern"]),
    _record("", "answered", "not_in_sources", ["scope.unknown_terms@scope"]),
]


def test_per_concept_rows_count_misses_and_layers() -> None:
    rows = per_concept(RECORDS)
    assert list(rows) == ["(none)", "mild.headache", "stroke"]
    stroke = rows["stroke"]
    assert (stroke.n, stroke.missed_emergencies, stroke.needless_urgent) == (3, 1, 0)
    assert stroke.status_accuracy == round(2 / 3, 4)
    assert stroke.caught_by == {"pattern": 1, "semantic": 1}
    assert rows["mild.headache"].needless_urgent == 1
    assert rows["(none)"].false_refusals == 1
    assert per_concept([_record("", "answered", "answered", [])]) == {}


def test_reasons_behind_wrong_statuses_point_at_the_cause() -> None:
    wrong = reasons_on_wrong_status(RECORDS)
    assert wrong == {
        "scope.covered@scope": 1,
        "scope.unknown_terms@scope": 1,
        "triage.now@pattern": 1,
        "urgent.meningitis@semantic": 1,
    }
    text = "\n".join(markdown_sections(per_concept(RECORDS), wrong, _md_table))
    assert "## Per concept" in text and "| stroke | 3 | 0.667 | 1 | 0 | 0 | pattern 1, semantic 1 |" in text
    assert "| urgent.meningitis@semantic | 1 |" in text
