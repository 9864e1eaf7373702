"""Text as the rules see it: NFKC, invisible characters removed, look-alikes folded, typos fixed.

Every rule (red-flag patterns, the semantic layer, scope) reads the message through here, so
"chеst" with a Cyrillic "е", "ches\u200bt pain" with a zero-width space, full-width letters or
"brething" all reach them as the words a patient meant.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

from ivig_qa.text import english

_LETTERS = re.compile(r"[^\W\d_]+")
# Where Unicode's confusables map a capital to a lower-case skeleton letter ("І" → "l"), the
# letter a reader sees is the capital's own Latin twin.
_CASE_TWINS = {"І": "I", "Ӏ": "I", "ǀ": "I", "Ι": "I"}


def _is_latin(ch: str) -> bool:
    return ch.isascii() or unicodedata.name(ch, "").startswith("LATIN")


def _latin_twin(ch: str) -> str | None:
    """The Latin letter ``ch`` is a look-alike of, if any."""
    if ch in _CASE_TWINS:
        return _CASE_TWINS[ch]
    found = confusables.is_confusable(ch, greedy=True, preferred_aliases=["latin"])
    for hit in found or ():
        for glyph in hit["homoglyphs"]:
            twin = glyph["c"]
            if len(twin) == 1 and twin.isascii() and twin.isalpha():
                return twin
    return None


def _fold_word(word: str) -> str:
    twins = [ch if _is_latin(ch) else _latin_twin(ch) for ch in word]
    if any(t is None for t in twins):
        return word  # a real word of another script, not a disguise
    return "".join(t for t in twins if t is not None)


def fold_lookalikes(text: str) -> str:
    """Cyrillic/Greek/other look-alike letters as Latin, in a message mostly written in Latin letters.

    A word is folded when every letter has a Latin twin and the message's letters are mostly
    Latin (a message written in Russian or Greek is left as it is).
    """
    letters = [ch for ch in text if ch.isalpha()]
    if not letters or all(ch.isascii() for ch in letters):
        return text
    latin = sum(_is_latin(ch) for ch in letters)
    if latin < len(letters) / 2:
        return text
    return _LETTERS.sub(lambda m: _fold_word(m.group()), text)


def strip_invisible(text: str) -> str:
    """Without format characters (zero-width spaces and joiners, soft hyphens, direction marks)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def normalise(text: str) -> str:
    """NFKC, invisible characters dropped, look-alikes folded, straight apostrophes and quotes."""
    text = strip_invisible(unicodedata.normalize("NFKC", text))
    text = fold_lookalikes(text)
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


COMMON_ENGLISH = 100  # a word this frequent in the English list is taken as meant
NEAR_PREFERRED = 0.8  # difflib ratio: a preferred word two edits from a 6-letter word
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def correct_spelling(
    text: str,
    known: frozenset[str] = frozenset(),
    preferred: frozenset[str] = frozenset(),
    english_fallback: bool = True,
) -> str:
    """Misspelled words replaced by the word one edit away a patient most likely meant.

    Left alone: words of ``known`` (the sources' vocabulary, chat shorthand), common English
    words, words shorter than 4 letters, and words with no candidate. Among the candidates,
    words of ``preferred`` (the sources' and the red-flag catalogue's words) win over plain
    English frequency, so "swolen" is "swollen" rather than "stolen"; failing those, a
    preferred word a little further away ("swole" → "swollen") is taken before English.
    ``english_fallback=False`` keeps to preferred words: a drug name one edit from an English word
    ("lyrica" → "lyric") must stay itself where scope reads it.
    """

    def fix(m: re.Match[str]) -> str:
        word = m.group()
        low = word.lower()
        if len(low) < 4 or low in known or low in preferred or "'" in low:
            return word
        return _corrected(low, preferred, english_fallback) or word

    return _WORD.sub(fix, text)


@lru_cache(maxsize=16384)
def _corrected(low: str, preferred: frozenset[str], english_fallback: bool) -> str | None:
    """``correct_spelling``'s choice for one lower-cased word (None: leave it). Kept per word,
    a bounded cache: a misspelling patients make once they make again."""
    spell = english()
    if spell.word_frequency[low] >= COMMON_ENGLISH:
        return None
    candidates = spell.known(spell.edit_distance_1(low)) - {low}
    liked = candidates & preferred
    if liked:
        return max(liked, key=lambda c: (spell.word_frequency[c], c))
    near = difflib.get_close_matches(low, _of_similar_length(low, preferred), n=1, cutoff=NEAR_PREFERRED)
    if near:
        return near[0]
    if low in spell or not candidates or not english_fallback:
        return None
    return max(candidates, key=lambda c: (spell.word_frequency[c], c))


def _of_similar_length(word: str, words: frozenset[str]) -> list[str]:
    """The ``words`` whose length lets difflib's ratio reach ``NEAR_PREFERRED`` (2·matches over
    both lengths, matches ≤ the shorter): the same result as searching all of them, faster."""
    by_length = _by_length(words)
    n, c = len(word), NEAR_PREFERRED
    low, high = math.ceil(n * c / (2 - c) - 1e-9), math.floor(n * (2 - c) / c + 1e-9)
    return [w for length in range(low, high + 1) for w in by_length.get(length, ())]


@lru_cache(maxsize=8)
def _by_length(words: frozenset[str]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for w in words:
        out.setdefault(len(w), []).append(w)
    return {n: tuple(ws) for n, ws in out.items()}
