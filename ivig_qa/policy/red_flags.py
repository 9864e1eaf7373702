"""The red-flag catalogue (``data/red_flags.toml``) and its precise first layer, the patterns.

A concept is a clinical sign with an id, a tier (``red_flag`` → urgent care, ``mild`` → answered
with "tell your care team"), patterns, lay descriptions and "not this" neighbours. The
semantic layer (``policy.semantic``) reads the descriptions; this module reads the patterns and
the "now" / "general question" / "resolved" / "past" signals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache, cached_property

from ivig_qa import data
from ivig_qa.text import TOKEN, english

RED_FLAG = "red_flag"
MILD = "mild"


def _compile(patterns: list[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


@dataclass(frozen=True)
class Concept:
    """One sign of the catalogue."""

    id: str
    tier: str
    meaning: str
    patterns: tuple[re.Pattern[str], ...]
    descriptions: tuple[str, ...]
    not_this: tuple[str, ...]
    semantic: bool = True
    """Its descriptions are the semantic layer's examples; False: patterns only (the model reads
    the topic, e.g. medicines, not the event, e.g. an overdose), descriptions kept as tests."""

    @property
    def urgent(self) -> bool:
        return self.tier == RED_FLAG


@dataclass(frozen=True)
class Signals:
    """Patterns and examples of one reading of a message ("now", "general", "resolved")."""

    patterns: tuple[re.Pattern[str], ...]
    examples: tuple[str, ...]
    counter_examples: tuple[str, ...] = ()

    def search(self, text: str) -> re.Match[str] | None:
        return next((m for p in self.patterns if (m := p.search(text))), None)


@dataclass(frozen=True)
class Catalogue:
    """Every concept, the reading signals and the semantic layer's calibration."""

    concepts: tuple[Concept, ...]
    now: Signals
    weak_now: Signals
    resolved_unless: Signals
    mild_wording: Signals
    general: Signals
    resolved: Signals
    past: Signals
    reassurance: Signals
    condition: Signals
    reported: Signals
    reported_unless: Signals
    context: tuple[re.Pattern[str], ...]
    semantic: dict[str, float]
    not_event: tuple[str, ...] = ()
    """Conditions, histories, recurring illnesses: counter-examples of every red flag."""
    not_body: tuple[str, ...] = ()
    """Everyday things said around an infusion: what a reported clause is told from."""

    @classmethod
    @cache
    def load(cls) -> Catalogue:
        raw = data.load("red_flags.toml")
        concepts = tuple(
            Concept(
                id=c["id"],
                tier=c["tier"],
                meaning=c["meaning"],
                patterns=_compile(c.get("patterns", [])),
                descriptions=tuple(c.get("descriptions", [])),
                not_this=tuple(c.get("not_this", [])),
                semantic=bool(c.get("semantic", True)),
            )
            for c in raw["concept"]
        )
        signals = {
            name: Signals(
                _compile(raw[name]["patterns"]),
                tuple(raw[name].get("examples", [])),
                tuple(raw[name].get("counter_examples", [])),
            )
            for name in ("now", "general", "resolved", "past", "reassurance", "condition", "reported")
        }
        weak_now = Signals(_compile(raw["now"]["weak_patterns"]), ())
        unless = Signals(_compile(raw["resolved"]["unless"]), ())
        reported_unless = Signals(_compile(raw["reported"]["unless"]), ())
        mild_wording = Signals(_compile(raw["mild_wording"]["patterns"]), ())
        context = _compile(raw["context"]["patterns"])
        return cls(
            concepts,
            weak_now=weak_now,
            resolved_unless=unless,
            reported_unless=reported_unless,
            mild_wording=mild_wording,
            context=context,
            semantic=dict(raw["semantic"]),
            not_event=tuple(raw.get("not_event", {}).get("examples", [])),
            not_body=tuple(raw["reported"].get("not_body", [])),
            **signals,
        )

    def without(self, concept_id: str) -> Catalogue:
        """The catalogue with one concept's lay descriptions removed (leave-one-concept-out)."""
        kept = tuple(replace(c, descriptions=()) if c.id == concept_id else c for c in self.concepts)
        return replace(self, concepts=kept)

    def core(self, text: str) -> str:
        """``text`` without its context phrases (when, after which treatment): the complaint itself."""
        for pattern in self.context:
            text = pattern.sub(" ", text)
        return " ".join(text.split())

    def concept(self, concept_id: str) -> Concept:
        return next(c for c in self.concepts if c.id == concept_id)

    @property
    def words(self) -> frozenset[str]:
        """Every word of the descriptions (typos are corrected towards these)."""
        texts = [t for c in self.concepts for t in (*c.descriptions, *c.not_this, c.meaning)]
        texts += self.not_event
        return frozenset(w for t in texts for w in TOKEN.findall(t.lower()) if w.isalpha())

    @cached_property
    def spelling_words(self) -> frozenset[str]:
        """What a typo is corrected towards: the descriptions' words and the English words the
        patterns look for, so "cola" in "pee the colour of coca cola" is not "corrected" to "cold".
        (Not scope's known words: "coffee" or "insulin" stay a subject a question can ask about.)"""
        frequency = english().word_frequency
        named = {
            w
            for c in self.concepts
            for p in c.patterns
            for w in re.findall(r"[a-z]{4,}", re.sub(r"\\[a-zA-Z]", " ", p.pattern.lower()))
            if frequency[w] >= 1
        }
        return self.words | named


@dataclass(frozen=True)
class PatternHit:
    concept: Concept
    index: int
    text: str
    start: int = 0
    end: int = 0


def pattern_hits(catalogue: Catalogue, text: str) -> list[PatternHit]:
    """Each concept whose patterns match ``text`` (lower-cased, normalised), with the first pattern."""
    hits: list[PatternHit] = []
    for concept in catalogue.concepts:
        for i, pattern in enumerate(concept.patterns):
            m = pattern.search(text)
            if m:
                hits.append(PatternHit(concept, i, m.group(), m.start(), m.end()))
                break
    return hits
