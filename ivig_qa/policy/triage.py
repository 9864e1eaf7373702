"""Triage rules: is the message an emergency, a request for a personal decision, or an injection?

* urgent — a red-flag symptom someone is having: the answer starts with what to do now;
* personal — the user asks what they (or someone in their care) should do: the sources
  are shared, the decision is left to the care team;
* injection — a request to change the assistant's rules: ignored, and noted.

Rules live in ``data/triage.toml`` so clinicians can review them without reading code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ivig_qa import data
from ivig_qa.text import collapse_space, fold


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


def urgent_rule(message: str) -> str | None:
    """The id of the red flag the message describes, unless it is plainly a general question
    about side effects (a red flag and no sign of experiencing it, in a question's form)."""
    text = fold(message)
    rules = Rules.load()
    hit = next((i for i, p in enumerate(rules.red_flags) if p.search(text)), None)
    if hit is None:
        return None
    if not _any(rules.experiencing, text) and _any(rules.informational, text):
        return None
    return f"urgent.red_flag.{hit}"


def is_urgent(message: str) -> bool:
    """A red flag someone is having (see ``urgent_rule``)."""
    return urgent_rule(message) is not None


def is_personal(message: str) -> bool:
    """Asks for a decision about the writer or someone in their care."""
    text = fold(message)
    rules = Rules.load()
    return _any(rules.subject, text) and _any(rules.decision, text)


def has_injection(message: str) -> bool:
    """Asks to change the assistant's rules; the rest of the message is still answered."""
    return _any(Rules.load().injection, fold(message))


def strip_injection(message: str) -> str:
    """The message without rule-changing phrases, so they cannot steer retrieval."""
    text = message
    for pattern in Rules.load().injection:
        text = pattern.sub(" ", text)
    return collapse_space(text)
