"""Per-clause reading, the severity signal and personal decisions: the data files' examples and
counter-examples are run through triage (real model, real index).

* ``data/severity.toml``: every modifier's examples are urgent (``urgent.severe_now`` or a red
  flag), its counter-examples are not urgent by the severity signal;
* ``data/red_flags.toml`` reading signals: "now", "past", "resolved", "general", "condition",
  "reassurance" examples read as their signal on the clause that carries them;
* the not-an-event examples are not urgent;
* ``data/triage.toml`` personal examples are decisions, its counter-examples are not.
"""

from __future__ import annotations

import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.policy.normalise import correct_spelling, normalise
from ivig_qa.policy.reading import GENERAL, NOW, PAST, RESOLVED, SET_ASIDE, Reader, Severity, split
from ivig_qa.policy.red_flags import Catalogue
from ivig_qa.policy.triage import Rules, Triage, Triager, is_personal
from ivig_qa.text import fold

CATALOGUE = Catalogue.load()
SEVERITY = Severity.load()
SEVERE = [(m.id, t) for m in SEVERITY.modifiers for t in m.examples]
NOT_SEVERE = [(m.id, t) for m in SEVERITY.modifiers for t in m.counter_examples]


@pytest.fixture(scope="module")
def triager(assistant: Assistant) -> Triager:
    return assistant.triager


def _triage(triager: Triager, text: str) -> Triage:
    return triager.assess(correct_spelling(normalise(text), preferred=CATALOGUE.spelling_words))


def test_every_modifier_has_examples_and_counter_examples() -> None:
    ids = [m.id for m in SEVERITY.modifiers]
    assert len(ids) == len(set(ids))
    for m in SEVERITY.modifiers:
        assert m.patterns and m.examples and m.counter_examples, m.id


@pytest.mark.parametrize(("modifier", "text"), SEVERE)
def test_severity_examples_are_urgent(triager: Triager, modifier: str, text: str) -> None:
    assert SEVERITY.modifier(fold(text)) is not None, text
    found = _triage(triager, text)
    assert found.is_urgent, [r.id for r in found.reasons]


@pytest.mark.parametrize(("modifier", "text"), NOT_SEVERE)
def test_severity_counter_examples_are_not_severe_now(triager: Triager, modifier: str, text: str) -> None:
    found = _triage(triager, text)
    assert "urgent.severe_now" not in {r.id for r in found.urgent}, [r.detail for r in found.urgent]


@pytest.mark.parametrize(
    "text",
    [
        "what causes severe headaches after ivig",
        "can ivig cause severe headaches in children",
        "can ivig cause heavy bleeding",
    ],
)
def test_a_descriptive_modifier_does_not_make_a_general_question_now(triager: Triager, text: str) -> None:
    """``reads_now = false`` (``intense``, ``ascending``): "severe headaches" in a general question
    does not read as someone having one, so the meningitis pattern it names is set aside."""
    assert any(not m.reads_now and m.search(fold(text)) for m in SEVERITY.modifiers), text
    found = _triage(triager, text)
    assert not found.is_urgent, [r.id for r in found.reasons]


def test_severity_needs_a_symptom_and_now() -> None:
    reader = Reader(fold("the queue at the clinic is not moving and it won't stop raining"), CATALOGUE)
    assert reader.severe_now(lambda unit: False) == []
    past = Reader(fold("two years ago i had a nosebleed that would not stop"), CATALOGUE)
    assert past.severe_now(lambda unit: True) == []
    now = Reader(fold("my nose is bleeding and it will not stop"), CATALOGUE)
    assert [r.id for r in now.severe_now(lambda unit: False)] == ["urgent.severe_now"]


def _reading_of_first_clause(text: str) -> str:
    reader = Reader(fold(text), CATALOGUE)
    return reader.clause(0)[0]


@pytest.mark.parametrize("text", CATALOGUE.now.examples)
def test_now_examples_read_as_now(text: str) -> None:
    assert _reading_of_first_clause(text) == NOW


@pytest.mark.parametrize("text", CATALOGUE.now.counter_examples)
def test_now_counter_examples_are_set_aside(text: str) -> None:
    assert _reading_of_first_clause(text) in SET_ASIDE


@pytest.mark.parametrize("text", CATALOGUE.past.examples)
def test_past_examples_read_as_past(text: str) -> None:
    assert _reading_of_first_clause(text) == PAST


@pytest.mark.parametrize("text", CATALOGUE.past.counter_examples)
def test_past_counter_examples_are_not_past(text: str) -> None:
    assert _reading_of_first_clause(text) != PAST


@pytest.mark.parametrize("text", CATALOGUE.resolved.examples)
def test_resolved_examples_read_as_resolved(text: str) -> None:
    assert _reading_of_first_clause(text) == RESOLVED


@pytest.mark.parametrize("text", CATALOGUE.resolved.counter_examples)
def test_resolved_counter_examples_keep_a_present_clause(triager: Triager, text: str) -> None:
    found = _triage(triager, text)
    assert found.is_urgent, [r.id for r in found.reasons]


@pytest.mark.parametrize("text", CATALOGUE.general.examples)
def test_general_examples_read_as_general(text: str) -> None:
    assert _reading_of_first_clause(text) == GENERAL


@pytest.mark.parametrize("text", CATALOGUE.general.counter_examples)
def test_general_counter_examples_read_as_now(text: str) -> None:
    reader = Reader(fold(text), CATALOGUE)
    assert reader.message()[0] == NOW


@pytest.mark.parametrize("text", CATALOGUE.condition.examples)
def test_condition_examples(text: str) -> None:
    reader = Reader(fold(text), CATALOGUE)
    assert any(reader.condition(i) for i in range(len(reader.clauses)))


@pytest.mark.parametrize("text", CATALOGUE.condition.counter_examples)
def test_condition_counter_examples(text: str) -> None:
    reader = Reader(fold(text), CATALOGUE)
    assert not any(reader.condition(i) for i in range(len(reader.clauses)))


@pytest.mark.parametrize("text", CATALOGUE.reassurance.examples)
def test_reassurance_examples(text: str) -> None:
    reader = Reader(fold(text), CATALOGUE)
    assert all(reader.reassured(i) for i in range(len(reader.clauses)))


@pytest.mark.parametrize("text", CATALOGUE.reassurance.counter_examples)
def test_reassurance_counter_examples(text: str) -> None:
    reader = Reader(fold(text), CATALOGUE)
    assert not any(reader.reassured(i) for i in range(len(reader.clauses)))


@pytest.mark.parametrize(
    "text",
    ["what do i do, my husband collapsed", "how do i help, my son fainted", "who do i call, mum passed out"],
)
def test_a_person_reported_beside_a_question_is_not_a_general_question(triager: Triager, text: str) -> None:
    """The question's opening word belongs to its own clause: the report beside it is read on its
    own words, so an emergency told after "what do i do" is not set aside as a general question."""
    assert _triage(triager, text).is_urgent


def test_a_question_after_a_comma_does_not_continue_the_clause_before_it(triager: Triager) -> None:
    """ "my son is starting ivig" reads as now, but the question after it asks about signs in
    general: it is not a continuation sharing that clause's person and tense."""
    found = _triage(triager, "my son is starting ivig, what are the signs of an allergic reaction")
    assert not found.is_urgent, [r.id for r in found.reasons]


@pytest.mark.parametrize("text", CATALOGUE.reported.examples)
def test_reported_examples_hear_tell_your_care_team(triager: Triager, text: str) -> None:
    """Something had now since the treatment, inside a question, far from every description."""
    found = _triage(triager, text)
    assert not found.is_urgent and [r.id for r in found.mild] == ["symptom.reported"], found.mild


@pytest.mark.parametrize("text", CATALOGUE.reported.counter_examples)
def test_reported_counter_examples_are_no_report(triager: Triager, text: str) -> None:
    """A question, a plan, a change for the better, a past event, a condition, or an everyday
    thing closer to ``not_body`` than to the body is not a report."""
    found = _triage(triager, text)
    assert not any(r.id == "symptom.reported" for r in found.mild), found.mild


@pytest.mark.parametrize("text", CATALOGUE.not_event)
def test_not_event_examples_are_not_urgent(triager: Triager, text: str) -> None:
    found = _triage(triager, text)
    assert not found.is_urgent, [r.id for r in found.reasons]


def test_a_present_red_flag_clause_wins_over_a_general_question() -> None:
    """Mitigation is judged per clause: "how often…" elsewhere does not answer a faint now."""
    text = fold("quick question about how often it is given - and my son just went pale and passed out")
    reader = Reader(text, CATALOGUE)
    passed = next(i for i, c in enumerate(reader.clauses) if "passed out" in c.text)
    assert reader.clause(passed)[0] == NOW
    assert reader.sentence_of(passed).startswith("quick question")


def test_clauses_keep_their_offsets() -> None:
    text = "my leg is swollen, it hurts and she had ivig last week. it is red"
    for c in split(text):
        assert text[c.start : c.end] == c.text


RULES = Rules.load()


@pytest.mark.parametrize("text", RULES.personal_examples)
def test_personal_examples_are_decisions(text: str) -> None:
    assert is_personal(text)


@pytest.mark.parametrize("text", RULES.personal_counter_examples)
def test_personal_counter_examples_are_questions(text: str) -> None:
    assert not is_personal(text)
