"""The sentence ranker's calibration and the quote decision that follows its probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.engines.extractive import ExtractiveEngine
from ivig_qa.engines.ranking import FEATURES, Ranker, default_ranker
from ivig_qa.evaluation.fit_ranker import calibrate
from ivig_qa.text import tokenize

QUESTIONS = (
    "how often is ivig given for lupus?",
    "can ivig actually set off a lupus flare? how likely is that",
    "what can they do to keep reactions from happening during the infusion",
)


def test_platt_calibration_recovers_a_known_slope_and_intercept() -> None:
    rng = np.random.default_rng(7)
    raw = rng.normal(0.0, 2.0, 20000)
    y = (rng.random(raw.size) < 1.0 / (1.0 + np.exp(-(0.5 * raw - 1.0)))).astype(int)
    slope, intercept = calibrate(raw, y)
    assert slope == pytest.approx(0.5, abs=0.05)
    assert intercept == pytest.approx(-1.0, abs=0.08)


def test_the_packaged_ranker_is_calibrated_and_keeps_the_order() -> None:
    ranker = default_ranker()
    assert ranker.slope > 0 and (ranker.slope, ranker.intercept) != (1.0, 0.0)
    x = np.random.default_rng(3).normal(size=(50, len(ranker.names)))
    full = np.zeros((50, len(FEATURES)))
    for j, name in enumerate(ranker.names):
        full[:, FEATURES.index(name)] = x[:, j] * ranker.scale[j] + ranker.mean[j]
    raw, calibrated = ranker.raw_logits(full), ranker.logits(full)
    assert np.allclose(calibrated, ranker.slope * raw + ranker.intercept)
    assert (np.argsort(raw) == np.argsort(calibrated)).all()
    uncalibrated = Ranker(ranker.names, ranker.mean, ranker.scale, ranker.weights, ranker.bias)
    assert np.allclose(uncalibrated.logits(full), raw)


@pytest.mark.parametrize("threshold", [0.05, 0.12, 0.3])
def test_quotes_follow_the_calibrated_probability(assistant: Assistant, threshold: float) -> None:
    settings = assistant.settings.updated(min_quote_probability=threshold, quote_margin=0.0)
    engine = ExtractiveEngine(assistant.retriever, settings)
    cap = settings.answer.max_answer_sentences
    for question in QUESTIONS:
        ranked = engine.candidates(question, assistant.retrieve(question))
        chosen = engine.select(ranked)
        leads = engine.leads(chosen)
        assert chosen[0] is ranked[0] and len(chosen) <= cap
        assert all(c.score >= threshold for c in chosen if c not in leads)
        left_out = [c for c in ranked if c not in chosen and c.score >= threshold]
        # A likely sentence is left out only when the answer is full or it repeats a quote.
        assert len(chosen) == cap or all(any(engine._overlaps(c, o) for o in chosen) for c in left_out)


def test_a_higher_threshold_never_quotes_more(assistant: Assistant) -> None:
    for question in QUESTIONS:
        retrieval = assistant.retrieve(question)
        counts = []
        for threshold in (0.05, 0.12, 0.3, 0.6):
            engine = ExtractiveEngine(
                assistant.retriever, assistant.settings.updated(min_quote_probability=threshold)
            )
            counts.append(len(engine.select(engine.candidates(question, retrieval))))
        assert counts == sorted(counts, reverse=True), (question, counts)


@pytest.mark.parametrize(
    ("singular", "plural"),
    [
        ("flare", "flares"),
        ("dose", "doses"),
        ("vaccine", "vaccines"),
        ("rash", "rashes"),
        ("class", "classes"),
    ],
)
def test_a_singular_and_its_plural_are_one_term(singular: str, plural: str) -> None:
    assert tokenize(singular) == tokenize(plural)


def test_a_question_in_the_singular_finds_the_plural_in_the_sources(assistant: Assistant) -> None:
    # The sources say "Increase in lupus flares = rare"; a patient asks about "a lupus flare".
    retrieval = assistant.retrieve("can ivig actually set off a lupus flare? how likely is that")
    assert any("lupus flares = rare" in p.chunk.text for p in retrieval.passages)
