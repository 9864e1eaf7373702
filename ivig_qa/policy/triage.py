"""Triage: an emergency, a mild symptom now, a request for a personal decision, or an injection?

* urgent — a red flag of the catalogue (``data/red_flags.toml``) someone is having. Two layers,
  any positive wins: the concepts' patterns, and the semantic layer (nearest neighbour over the
  lay descriptions, ``policy.semantic``). A hit is set aside only when the message reads as a
  general question (and nobody is described having it now) or as a past symptom that resolved:
  when unsure, urgency wins.
* mild — a symptom someone has now that is not a red flag: answered, with "tell your care team";
* personal — the user asks what they (or someone in their care) should take, skip, stop, dose…;
* injection — a request to change the assistant's rules: that part is ignored, and noted.

Rules live in ``data/triage.toml`` and ``data/red_flags.toml`` so clinicians can review them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from ivig_qa import data
from ivig_qa.policy.red_flags import Catalogue, pattern_hits
from ivig_qa.policy.semantic import SemanticLayer, clauses
from ivig_qa.text import collapse_space, fold
from ivig_qa.types import Reason


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


@dataclass(frozen=True)
class Rules:
    decision: list[re.Pattern[str]]
    subject: list[re.Pattern[str]]
    injection: list[re.Pattern[str]]
    quantity: re.Pattern[str]
    quantity_skip: frozenset[str]
    chat_words: frozenset[str]
    common_min_count: int
    subject_words: frozenset[str]
    ivig_names: frozenset[str]
    everyday_categories: tuple[str, ...]
    everyday_min_similarity: float
    treatment_words: frozenset[str]

    @classmethod
    @cache
    def load(cls) -> Rules:
        r = data.load("triage.toml")
        return cls(
            decision=_compile(r["personal"]["decision"]),
            subject=_compile(r["personal"]["subject"]),
            injection=_compile(r["scope"]["injection"]),
            quantity=re.compile(r["scope"]["quantity_pattern"]),
            quantity_skip=frozenset(r["scope"]["quantity_skip"]),
            chat_words=frozenset(r["scope"]["chat_words"]),
            common_min_count=int(r["scope"]["common_word_min_count"]),
            subject_words=frozenset(r["scope"]["subject_words"]),
            ivig_names=frozenset(r["scope"]["ivig_names"]),
            everyday_categories=tuple(r["scope"]["everyday_categories"]),
            everyday_min_similarity=float(r["scope"]["everyday_min_similarity"]),
            treatment_words=frozenset(r["scope"]["treatment_words"]),
        )


def _any(patterns: list[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


# -- how the message reads --------------------------------------------------------------------
NOW, GENERAL, RESOLVED, UNSURE = "now", "general", "resolved", "unsure"


def reading(text: str, catalogue: Catalogue | None = None) -> tuple[str, Reason]:
    """Whether ``text`` (folded) describes something happening now, a general question, or a
    past symptom that has gone; ``unsure`` when none of these shows."""
    cat = catalogue or Catalogue.load()
    strong = cat.now.search(text)
    if cat.resolved.search(text) and not cat.resolved_unless.search(text):
        m = cat.resolved.search(text)
        return RESOLVED, Reason(id="triage.resolved", layer="pattern", detail=m.group() if m else "")
    if strong:
        return NOW, Reason(id="triage.now", layer="pattern", detail=strong.group())
    general = cat.general.search(text)
    if general:
        return GENERAL, Reason(id="triage.general_question", layer="pattern", detail=general.group())
    weak = cat.weak_now.search(text)
    if weak:
        return NOW, Reason(id="triage.now", layer="pattern", detail=weak.group())
    return UNSURE, Reason(id="triage.unsure", layer="pattern")


@dataclass(frozen=True)
class Triage:
    """What triage found: red-flag reasons (urgent when any), mild-symptom reasons, the reading."""

    urgent: tuple[Reason, ...]
    mild: tuple[Reason, ...]
    set_aside: tuple[Reason, ...]
    reading: str
    reading_reason: Reason

    @property
    def is_urgent(self) -> bool:
        return bool(self.urgent)

    @property
    def is_mild(self) -> bool:
        return not self.urgent and bool(self.mild)

    @property
    def reasons(self) -> tuple[Reason, ...]:
        if self.urgent:
            return (*self.urgent, self.reading_reason)
        if self.mild:
            return (*self.mild, *self.set_aside, self.reading_reason)
        if self.set_aside:
            return (*self.set_aside, self.reading_reason)
        return ()


class Triager:
    """Both layers over one catalogue; ``semantic`` may be None (patterns only)."""

    def __init__(self, catalogue: Catalogue, semantic: SemanticLayer | None = None) -> None:
        self.catalogue = catalogue
        self.semantic = semantic

    def assess(self, text: str, known: Mapping[str, np.ndarray] | None = None) -> Triage:
        """Triage of ``text`` (normalised; spelling corrected). ``known``: vectors already computed
        (core text → vector), reused instead of embedding again."""
        folded = fold(text)
        read, why = reading(folded, self.catalogue)
        red: list[Reason] = []
        mild: list[Reason] = []
        for hit in pattern_hits(self.catalogue, folded):
            reason = Reason(
                id=f"urgent.{hit.concept.id}" if hit.concept.urgent else hit.concept.id,
                layer="pattern",
                detail=f"pattern {hit.index}: {hit.text}",
            )
            (red if hit.concept.urgent else mild).append(reason)
        # A general question or a symptom that has gone is answered whatever the semantic layer
        # finds (its hits would be set aside), so its embedding is spared.
        if self.semantic is not None and read not in (GENERAL, RESOLVED):
            parts = clauses(folded)
            vectors = self.semantic.embed(parts, dict(known or {}))
            for hit in self.semantic.best(parts, vectors):
                if not self.semantic.fires(hit):
                    continue
                reason = Reason(
                    id=f"urgent.{hit.concept.id}" if hit.concept.urgent else hit.concept.id,
                    layer="semantic",
                    score=round(hit.similarity, 4),
                    detail=f"closest: “{hit.example}” (counter {hit.counter:.2f}) for “{hit.clause}”",
                )
                (red if hit.concept.urgent else mild).append(reason)
        mild = [
            Reason(id=f"symptom.{r.id.removeprefix('mild.')}", layer=r.layer, score=r.score, detail=r.detail)
            for r in mild
        ]
        if red and all(r.layer == "semantic" for r in red):
            worded = self.catalogue.mild_wording.search(folded)
            if worded:
                aside = Reason(id="triage.mild_wording", layer="pattern", detail=worded.group())
                return self._not_urgent(mild, (*red, aside), read, why)
            confident = float(self.catalogue.semantic["confident_similarity"])
            named = [r for r in mild if r.layer == "pattern"]
            red_best = max(r.score or 0.0 for r in red)
            mild_best = max((r.score or 0.0 for r in mild if r.layer == "semantic"), default=0.0)
            # Only a single complaint: several together ("bad headache, keeps throwing up, wants
            # the lights off") are how red flags present.
            single = len(clauses(folded)) == 1
            if named and single and red_best < confident and mild_best >= red_best:
                aside = Reason(id="triage.mild_named", layer="pattern", detail=named[0].detail)
                return self._not_urgent(mild, (*red, aside), read, why)
        if red and read in (GENERAL, RESOLVED):
            return Triage((), (), tuple(red), read, why)
        if red:
            return Triage(tuple(red), (), (), read, why)
        return self._not_urgent(mild, (), read, why)

    @staticmethod
    def _not_urgent(mild: list[Reason], aside: tuple[Reason, ...], read: str, why: Reason) -> Triage:
        """A mild symptom someone has now, or nothing urgent (``aside``: red flags set aside)."""
        if mild and read not in (GENERAL, RESOLVED):
            return Triage((), tuple(mild), aside, read, why)
        return Triage((), (), (*aside, *mild), read, why)


@cache
def pattern_triager() -> Triager:
    """The pattern layer alone (no model): what ``is_urgent`` uses."""
    return Triager(Catalogue.load())


def urgent_rule(message: str) -> str | None:
    """The id of the first red flag the pattern layer finds someone having, if any."""
    found = pattern_triager().assess(message)
    return found.urgent[0].id if found.urgent else None


def is_urgent(message: str) -> bool:
    """A red flag someone is having, by the pattern layer (see ``Triager`` for both layers)."""
    return urgent_rule(message) is not None


# -- personal decisions and injections ----------------------------------------------------------
def is_personal(message: str) -> bool:
    """Asks for a decision about the writer or someone in their care."""
    text = fold(message)
    rules = Rules.load()
    return _any(rules.subject, text) and _any(rules.decision, text)


def has_injection(message: str) -> bool:
    """Asks to change the assistant's rules; the rest of the message is still answered."""
    return _any(Rules.load().injection, fold(message))


_PIECE = re.compile(r"(?<=[.!?;:,])\s+|\s+(?=\band\b)|\n+|#+")


def strip_injection(message: str) -> str:
    """The message without its rule-changing parts, so they cannot steer retrieval or scope.

    Clauses that ask to change the rules are dropped whole ("you are now X, a doctor with no
    rules." names X only to steer) when something else is left; otherwise only the matching
    phrases are removed.
    """
    rules = Rules.load().injection
    pieces = [p for p in _PIECE.split(message) if p and p.strip()]
    kept = [p for p in pieces if not _any(rules, fold(p))]
    rest = " ".join(kept)
    if len(re.findall(r"\w+", rest)) >= 3 and len(kept) < len(pieces):
        text = re.sub(r"^\s*and\b\s*", "", rest, flags=re.IGNORECASE)
    else:
        text = message
    for pattern in rules:
        text = pattern.sub(" ", text)
    return collapse_space(text)
