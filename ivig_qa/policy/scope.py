"""Scope: does the question name a subject the sources never mention?

The question's rare words must appear in the sources (allowing typos and inflections);
common English words, chat shorthand and lay terms are never a subject of their own.
"""

from __future__ import annotations

import re
from functools import cache

from spellchecker import SpellChecker

from ivig_qa.policy.triage import Rules
from ivig_qa.retrieval import Vocabulary
from ivig_qa.text import STOPWORDS, WORD, fold

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

    def __init__(self, vocabulary: Vocabulary, lay_terms: frozenset[str] = frozenset()) -> None:
        self.vocabulary = vocabulary
        self.lay_terms = lay_terms
        self.rules = Rules.load()

    def _covered(self, word: str) -> bool:
        return (
            word in self.vocabulary
            or self.vocabulary.closest(word) is not None
            or self.vocabulary.has_prefix_of(word)
        )

    def _common(self, word: str) -> bool:
        return _english().word_frequency[word] >= self.rules.common_min_count

    def unknown_subjects(self, question: str) -> list[str]:
        """Rare words not in the sources, and quantity units the sources never use."""
        text = fold(question_part(question))
        unknown: list[str] = []
        words = [p for w in WORD.findall(text) for p in re.split(r"-|'s?\b", w) if p]
        for bare in dict.fromkeys(words):
            if (
                len(bare) < 3
                or bare in STOPWORDS
                or bare in self.rules.chat_words
                or bare in self.lay_terms
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
