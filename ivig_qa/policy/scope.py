"""Scope: do the sources cover what the question asks about?

The subject words of what is asked must appear in the sources (allowing typos and
inflections). Not a subject of their own: common English words, chat shorthand, lay terms,
common words of other languages ("hola", "bitte"), the story told before a long question, and
the rule-changing part of an injection (removed before scope sees the message). A question of
several parts whose subjects are partly covered is answered, its uncovered part named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivig_qa.policy.language import filler_words, is_foreign_filler
from ivig_qa.policy.normalise import english
from ivig_qa.policy.semantic import Encoder, encode_cached, unit_rows
from ivig_qa.policy.triage import Rules
from ivig_qa.retrieval import Vocabulary
from ivig_qa.text import STOPWORDS, WORD, fold, stem

MAX_CACHED_WORDS = 20_000
PRONOUNS = frozenset({"it", "its", "they", "them", "their", "this", "that", "these", "those"})
LONG_MESSAGE_SENTENCES = 4
LONG_MESSAGE_WORDS = 30  # a story of two or more sentences this long is context too
# A second question joined to the first: ", and does it…", " and how often…"
_SECOND_QUESTION = re.compile(
    r",?\s+(?:and|also|plus|or)\s+(?=(?:does|do|is|are|can|could|will|would|what|how|why|when|which|"
    r"should|has|have|was|were)\b)",
    re.IGNORECASE,
)


# A word's parts: hyphenated words split, and contractions cut off ("isn't" → "is", "it's" → "it").
_WORD_PARTS = re.compile(r"-|n't\b|'(?:s|re|ve|ll|d|m|t)?\b")

_ASKS = re.compile(
    r"\?\s*$|^\W*(what|whats|how|why|when|where|which|who|does|do|did|is|are|can|could|will|would|"
    r"should|has|have|was|were|any|tell me)\b"
)


def asks(text: str) -> bool:
    """``text`` is worded as a question (a question mark, or opening with a question word)."""
    return bool(_ASKS.search(fold(text)))


def question_part(message: str) -> str:
    """What a long message actually asks: its questions, or else its last two sentences.

    Patients often tell their story first; the drugs and places in the story are context,
    not the subject of the question.
    """
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", message.strip()) if s]
    long = len(sentences) > LONG_MESSAGE_SENTENCES or (
        len(sentences) >= 2 and len(message.split()) >= LONG_MESSAGE_WORDS
    )
    if not long:
        return message
    asked = [s for s in sentences if s.rstrip().endswith("?")]
    return " ".join(asked or sentences[-2:])


def question_parts(question: str) -> list[str]:
    """The separate questions of a message: its sentences, and questions joined by "and"."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", question.strip()) if s.strip()]
    return [p for s in sentences for p in _SECOND_QUESTION.split(s) if p.strip()]


@dataclass(frozen=True)
class Coverage:
    """``unknown``: the subject words of a question the sources never mention (not in sources);
    ``uncovered``: those of some parts of a question whose other parts are covered (answered)."""

    unknown: tuple[str, ...] = ()
    uncovered: tuple[str, ...] = ()


class ScopeChecker:
    """Finds the words of a question that name a subject the sources never mention."""

    def __init__(
        self,
        vocabulary: Vocabulary,
        lay_terms: frozenset[str] = frozenset(),
        encode: Encoder | None = None,
        known: frozenset[str] = frozenset(),
        cache: Path | None = None,
        model_key: str = "",
    ) -> None:
        """``encode`` (the question encoder) turns on everyday subjects by meaning; ``known``:
        more words that are never a subject (the red-flag catalogue's lay vocabulary)."""
        self.vocabulary = vocabulary
        self.lay_terms = lay_terms
        self.known = known
        self.rules = Rules.load()
        self.encode = encode
        self.filler = filler_words(cache)  # other languages' common words: loaded now, not mid-answer
        self._word_vectors: dict[str, np.ndarray] = {}
        self._everyday = None
        if encode is not None:
            prototypes = [*sorted(self.rules.subject_words), *self.rules.everyday_categories]
            self._everyday = encode_cached(prototypes, encode, cache, model_key)

    def everyday(self, words: list[str]) -> list[str]:
        """The words that mean an everyday subject (close to a subject word or category)."""
        if self._everyday is None or not words:
            return []
        missing = [w for w in words if w not in self._word_vectors]
        if missing:
            if len(self._word_vectors) > MAX_CACHED_WORDS:
                self._word_vectors.clear()
            self._word_vectors.update(zip(missing, unit_rows(self.encode(missing)), strict=True))  # type: ignore[misc]
        vectors = np.stack([self._word_vectors[w] for w in words])
        best = (vectors @ self._everyday.T).max(axis=1)
        return [w for w, b in zip(words, best, strict=True) if b >= self.rules.everyday_min_similarity]

    def _covered(self, word: str) -> bool:
        """In the sources, as itself, an inflection, or a misspelling of a sources' word. A common
        English word is not a misspelling of another one ("makeup" is not "make")."""
        return (
            word in self.vocabulary
            or self.vocabulary.has_prefix_of(word)
            or (not self._common(word) and self.vocabulary.closest(word) is not None)
        )

    def _common(self, word: str) -> bool:
        return english().word_frequency[word] >= self.rules.common_min_count

    def coverage(self, question: str) -> Coverage:
        """Which subject words of what ``question`` asks the sources don't mention, part by part."""
        parts = question_parts(question_part(question))
        parts = [p for p in parts if asks(p)] or parts  # statements are not asked
        missing = [self.unknown_subjects(p, whole=False) for p in parts]
        for i in range(1, len(parts)):
            # "what is X's schedule and what side effects does it have": "it" is X, not IVIG,
            # unless the earlier part was about IVIG itself.
            if not missing[i] and missing[i - 1] and self.refers_back(parts[i], parts[i - 1]):
                missing[i] = missing[i - 1]
        if not any(missing):
            return Coverage()
        if all(missing):
            return Coverage(unknown=tuple(dict.fromkeys(w for m in missing for w in m)))
        return Coverage(uncovered=tuple(dict.fromkeys(w for m in missing for w in m)))

    def names_treatment(self, text: str) -> bool:
        """Mentions IVIG or its treatment (the sources' own subject)."""
        words = set(WORD.findall(fold(text)))
        return bool(words & (self.rules.ivig_names | self.rules.treatment_words))

    def refers_back(self, part: str, earlier: str) -> bool:
        """``part`` names no subject of its own but a pronoun, and ``earlier`` is not about IVIG."""
        words = set(WORD.findall(fold(part)))
        names = self.rules.ivig_names
        return bool(words & PRONOUNS) and not words & names and not set(WORD.findall(fold(earlier))) & names

    def unknown_subjects(self, question: str, whole: bool = True) -> list[str]:
        """Rare words not in the sources, and quantity units the sources never use.

        ``whole``: ``question`` is a whole message (its question part is read); else one part.
        """
        text = fold(question_part(question) if whole else question)
        unknown: list[str] = []
        common: list[str] = []
        words = [p for w in WORD.findall(text) for p in _WORD_PARTS.split(w) if p]
        for bare in dict.fromkeys(words):
            if (
                len(bare) >= 3
                and bare not in STOPWORDS
                and bare not in self.rules.chat_words
                and bare not in self.lay_terms
                and bare not in self.known
                and stem(bare) not in self.known
                and bare not in self.rules.subject_words
                and self._common(bare)
                and not self._covered(bare)
            ):
                common.append(bare)
            if (
                len(bare) < 3
                or bare in STOPWORDS
                or bare in self.rules.chat_words
                or stem(bare) in self.rules.chat_words
                or bare in self.lay_terms
                or bare.isdigit()
                or self._covered(bare)
                or (
                    bare not in self.rules.subject_words
                    and (self._common(bare) or is_foreign_filler(bare, self.filler))
                )
            ):
                continue
            unknown.append(bare)
        unknown += self.everyday(common)
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
