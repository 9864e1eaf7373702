"""Triage: decide what kind of message this is before (and after) retrieval.

* urgent — a red-flag symptom someone is having: the answer starts with what to do now;
* personal — the user asks what they (or someone in their care) should do: the sources
  are shared, the decision is left to the care team;
* out of scope — the question's specific subject (a disease, drug, brand, unit) does not
  appear in the sources, or nothing in them is close to the question.

Rules live in ``data/triage.toml`` so clinicians can review them without reading code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from spellchecker import SpellChecker

from ivig_qa import data
from ivig_qa.retrieval import Vocabulary
from ivig_qa.text import STOPWORDS

_WORD = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")


def normalise(text: str) -> str:
    """Lower case, straight apostrophes, single spaces: what the patterns are written for."""
    text = text.lower().replace("’", "'").replace("‘", "'")
    return re.sub(r"\s+", " ", text).strip()


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


@dataclass(frozen=True)
class Rules:
    red_flags: list[re.Pattern[str]]
    experiencing: list[re.Pattern[str]]
    informational: list[re.Pattern[str]]
    decision: list[re.Pattern[str]]
    subject: list[re.Pattern[str]]
    injection: list[re.Pattern[str]]
    quantity: re.Pattern[str]
    quantity_skip: frozenset[str]
    chat_words: frozenset[str]
    common_min_count: int
    subject_words: frozenset[str]

    @classmethod
    @cache
    def load(cls) -> Rules:
        r = data.load("triage.toml")
        return cls(
            red_flags=_compile(r["urgent"]["red_flags"]),
            experiencing=_compile(r["urgent"]["experiencing"]),
            informational=_compile(r["urgent"]["informational"]),
            decision=_compile(r["personal"]["decision"]),
            subject=_compile(r["personal"]["subject"]),
            injection=_compile(r["scope"]["injection"]),
            quantity=re.compile(r["scope"]["quantity_pattern"]),
            quantity_skip=frozenset(r["scope"]["quantity_skip"]),
            chat_words=frozenset(r["scope"]["chat_words"]),
            common_min_count=int(r["scope"]["common_word_min_count"]),
            subject_words=frozenset(r["scope"]["subject_words"]),
        )


def _any(patterns: list[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def is_urgent(message: str) -> bool:
    """A red flag, unless the message is plainly a general question about side effects."""
    text = normalise(message)
    rules = Rules.load()
    if not _any(rules.red_flags, text):
        return False
    experiencing = _any(rules.experiencing, text)
    informational = _any(rules.informational, text)
    return experiencing or not informational


def is_personal(message: str) -> bool:
    """Asks for a decision about the writer or someone in their care."""
    text = normalise(message)
    rules = Rules.load()
    return _any(rules.subject, text) and _any(rules.decision, text)


def has_injection(message: str) -> bool:
    """Asks to change the assistant's rules; the rest of the message is still answered."""
    return _any(Rules.load().injection, normalise(message))


def strip_injection(message: str) -> str:
    """The message without rule-changing phrases, so they cannot steer retrieval."""
    text = message
    for pattern in Rules.load().injection:
        text = pattern.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


LONG_MESSAGE_SENTENCES = 4


def question_part(message: str) -> str:
    """What a long message actually asks: its questions, or else its last two sentences.

    Patients often tell their story first; the drugs and places in the story are context,
    not the subject of the question.
    """
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", message.strip()) if s]
    if len(sentences) <= LONG_MESSAGE_SENTENCES:
        return message
    asked = [s for s in sentences if s.rstrip().endswith("?")]
    return " ".join(asked or sentences[-2:])


@cache
def _english() -> SpellChecker:
    return SpellChecker(distance=1)


class ScopeChecker:
    """Finds the words of a question that name a subject the sources never mention."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.rules = Rules.load()

    def _covered(self, word: str) -> bool:
        return (
            word in self.vocabulary
            or self.vocabulary.closest(word) is not None
            or self.vocabulary.has_prefix_of(word)
        )

    def _common(self, word: str) -> bool:
        return _english().word_frequency[word] >= self.rules.common_min_count

    def unknown_subjects(self, question: str, lay_terms: frozenset[str] = frozenset()) -> list[str]:
        """Rare words not in the sources, and quantity units the sources never use."""
        text = normalise(question_part(question))
        unknown: list[str] = []
        words = [p for w in _WORD.findall(text) for p in re.split(r"-|'s?\b", w) if p]
        for bare in dict.fromkeys(words):
            if (
                len(bare) < 3
                or bare in STOPWORDS
                or bare in self.rules.chat_words
                or bare in lay_terms
                or bare.isdigit()
                or self._covered(bare)
                or (self._common(bare) and bare not in self.rules.subject_words)
            ):
                continue
            unknown.append(bare)
        for m in self.rules.quantity.finditer(text):
            unit = m.group(2)
            if (
                unit not in self.rules.quantity_skip
                and unit not in self.rules.chat_words
                and not self._covered(unit)
                and unit not in unknown
            ):
                unknown.append(unit)
        return unknown
