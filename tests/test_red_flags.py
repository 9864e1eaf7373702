"""The red-flag catalogue: its examples and counter-examples are run through triage (real model).

* every red-flag description is urgent with that very description left out of the semantic
  layer (so the test is not the description matching itself);
* every mild description is not urgent and, with itself left out, still a mild symptom;
* every "not this" neighbour of a red flag is not urgent for that concept;
* no evaluation message appears verbatim in the catalogue;
* leave-one-concept-out on eval/triage.jsonl: emergencies are still caught with their concept's
  descriptions removed (the rate is printed with ``-s``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.evaluation.loco import emergencies, leave_one_concept_out
from ivig_qa.policy.normalise import correct_spelling, normalise
from ivig_qa.policy.red_flags import MILD, RED_FLAG, Catalogue
from ivig_qa.policy.semantic import SemanticLayer
from ivig_qa.policy.triage import Triage, Triager

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = Catalogue.load()
RED = [(c.id, d) for c in CATALOGUE.concepts if c.tier == RED_FLAG for d in c.descriptions]
# Known gaps, kept visible: where a symptom is matters more than what it is to the embedding model,
# so a rash "on my chest" is closer to chest pain than to the other rash descriptions, and a sore
# throat is closer to a throat closing up (anaphylaxis) than to a runny nose: both are sent to
# urgent care (the safe side).
KNOWN_GAPS = {
    "a few red spots came up on my chest after the infusion": "location outweighs symptom",
    "I have a scratchy sore throat since yesterday": "the throat outweighs the complaint",
}
MILDS = [
    pytest.param(c.id, d, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[d]))
    if d in KNOWN_GAPS
    else (c.id, d)
    for c in CATALOGUE.concepts
    if c.tier == MILD
    for d in c.descriptions
]
RED_NOT_THIS = [(c.id, t) for c in CATALOGUE.concepts if c.tier == RED_FLAG for t in c.not_this]
MILD_NOT_THIS = [(c.id, t) for c in CATALOGUE.concepts if c.tier == MILD for t in c.not_this]


@pytest.fixture(scope="module")
def layer(assistant: Assistant) -> SemanticLayer:
    semantic = assistant.triager.semantic
    assert semantic is not None
    return semantic


def _triage(layer: SemanticLayer, text: str) -> Triage:
    return Triager(layer.catalogue, layer).assess(
        correct_spelling(normalise(text), preferred=CATALOGUE.spelling_words)
    )


def test_catalogue_is_well_formed() -> None:
    ids = [c.id for c in CATALOGUE.concepts]
    assert len(ids) == len(set(ids))
    assert {c.tier for c in CATALOGUE.concepts} == {RED_FLAG, MILD}
    for c in CATALOGUE.concepts:
        assert c.meaning and c.descriptions and c.not_this, c.id
        assert c.tier == MILD or c.patterns, f"{c.id}: a red flag needs its precise pattern layer"
    must_cover = {"anaphylaxis", "chest_pain", "stroke", "lung_clot", "limb_clot", "kidney", "meningitis"}
    must_cover |= {"haemolysis", "breathing", "seizure", "unresponsive", "skin_severe", "cyanosis"}
    must_cover |= {"infant_fever", "self_harm", "poisoning"}
    assert must_cover | {"hypertension_crisis", "floppy_baby"} <= set(ids)


def test_a_patterns_only_concept_gives_the_semantic_layer_no_examples(layer: SemanticLayer) -> None:
    """``semantic = false``: its descriptions are the patterns' tests, never the model's examples."""
    patterns_only = [c for c in CATALOGUE.concepts if not c.semantic]
    assert patterns_only  # poisoning: the model reads "a medicine", not "an overdose"
    for concept in patterns_only:
        assert not set(concept.descriptions) & set(layer.pos_texts), concept.id
        for text in concept.descriptions:
            assert any(p.search(text.lower()) for p in concept.patterns), text


@pytest.mark.parametrize(("concept", "text"), RED)
def test_red_flag_descriptions_are_urgent_without_themselves(
    layer: SemanticLayer, concept: str, text: str
) -> None:
    found = _triage(layer.without_description(text), text)
    assert found.is_urgent, (concept, [r.id for r in found.reasons])


@pytest.mark.parametrize(("concept", "text"), MILDS)
def test_mild_descriptions_are_mild_not_urgent(layer: SemanticLayer, concept: str, text: str) -> None:
    found = _triage(layer.without_description(text), text)
    assert not found.is_urgent, [r.id for r in found.reasons]
    assert found.is_mild, [r.id for r in found.reasons]


@pytest.mark.parametrize(("concept", "text"), RED_NOT_THIS)
def test_red_flag_counter_examples_are_not_that_red_flag(
    layer: SemanticLayer, concept: str, text: str
) -> None:
    found = _triage(layer, text)
    assert f"urgent.{concept}" not in {r.id for r in found.urgent}, [r.id for r in found.reasons]


@pytest.mark.parametrize(("concept", "text"), MILD_NOT_THIS)
def test_mild_counter_examples_are_not_that_mild_symptom(
    layer: SemanticLayer, concept: str, text: str
) -> None:
    found = _triage(layer, text)
    mild_id = f"symptom.{concept.removeprefix('mild.')}"
    assert mild_id not in {r.id for r in found.mild}, [r.id for r in found.reasons]


def test_no_evaluation_message_is_copied_into_the_catalogue() -> None:
    def norm(t: str) -> str:
        return " ".join(t.lower().split()).strip(" ?.!")

    catalogue = {norm(t) for c in CATALOGUE.concepts for t in (*c.descriptions, *c.not_this)}
    for path in sorted((REPO / "eval").glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                question = norm(json.loads(line)["question"])
                assert question not in catalogue, f"{path.name}: {question!r} is in the catalogue"


@pytest.mark.parametrize(
    ("text", "urgent"),
    [
        ("I feel washed out and a bit achy tonight", False),  # washed out ~ blacking out
        ("feeling washed out, achy all over after ivig", False),  # all over ~ itching all over
        ("I feel washed out and my lips have gone blue", True),  # a pattern names the red flag
        ("I'm achy and feel like I might pass out", True),
    ],
)
def test_a_weak_resemblance_gives_way_to_a_named_mild_symptom(
    layer: SemanticLayer, text: str, urgent: bool
) -> None:
    """``weak_similarity``: a semantic-only red flag just over the floor, in clauses naming no
    symptom, beside a mild symptom a pattern names, is the mild one; a pattern's red flag is not."""
    found = _triage(layer, text)
    assert found.is_urgent == urgent, [r.id for r in found.reasons]
    if not urgent:
        assert found.is_mild and "triage.mild_named" in {r.id for r in found.set_aside}


def test_leave_one_concept_out(layer: SemanticLayer) -> None:
    """Emergencies of a concept whose descriptions are removed are mostly still caught.

    Measured on eval/triage.jsonl (the tuning set): 0.859 with the remaining layers (the concept's
    patterns, the other concepts' descriptions), 0.577 by the semantic layer alone.
    """
    items = emergencies(REPO / "eval" / "triage.jsonl")
    for patterns, floor in ((True, 0.80), (False, 0.50)):
        rows = leave_one_concept_out(layer, items, patterns=patterns)
        caught, total = sum(r.caught for r in rows), sum(r.n for r in rows)
        print(f"\nleave-one-concept-out, patterns={patterns}: {caught}/{total} = {caught / total:.3f}")
        for r in rows:
            print(f"  {r.concept:22} {r.caught}/{r.n}")
        assert caught / total >= floor


def test_a_vector_already_computed_for_the_same_text_is_reused(layer: SemanticLayer) -> None:
    """The retrieval's vector of the question stands in for a clause that is the same text
    (case, spacing and end punctuation aside); a different text is embedded afresh."""
    dim = layer.pos.shape[1]
    given = np.full(dim, 0.5, dtype=np.float32)
    known = {"Can IVIG  be given during pregnancy?": given}
    same, other = layer.embed(["can ivig be given during pregnancy", "can ivig be given at home"], known)
    assert np.array_equal(same, given)
    assert not np.allclose(other, given)
    assert np.isclose(float(np.linalg.norm(other)), 1.0, atol=1e-3)  # a real (unit) embedding


def test_a_sign_found_in_a_sentence_must_survive_without_its_condition_clause(assistant: Assistant) -> None:
    """A resemblance found in a whole sentence ("foot" ~ "my foot has gone cold and pale") whose
    body part is in a clause that says someone has a condition is re-read without that clause:
    "tried nerve blocks, gabapentin, everything" resembles no red flag. A sign the other
    clauses carry on their own stays urgent."""
    story = (
        "i have crps in my right foot since 2019 after a fracture, tried nerve blocks, gabapentin, everything"
    )
    found = assistant.triager.assess(story)
    assert not found.is_urgent, [r.id for r in found.reasons]
    assert {"urgent.limb_clot", "triage.condition"} <= {r.id for r in found.reasons}
    now = "he has small fiber neuropathy, and tonight he cant catch his breath even sitting down"
    assert assistant.triager.assess(now).is_urgent
