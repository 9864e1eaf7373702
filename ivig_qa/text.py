"""Text primitives shared by every stage: words, stems, stop words, whitespace, markup, sentences.

One home for them, so retrieval, policy, engines and evaluation agree on what a word is.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

# fmt: off
STOPWORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at",
        "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can",
        "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from",
        "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him",
        "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me",
        "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only",
        "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some",
        "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these", "they",
        "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were",
        "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would",
        "you", "your", "yours", "yourself", "im", "ive", "id", "dont", "doesnt", "get", "gets", "got",
        "go", "going", "really", "thing", "things", "ok", "okay", "pls", "please", "thanks", "hi",
        "hey", "also", "like", "know", "want", "wondering", "anyone", "someone", "say", "says", "tell",
        "u", "ur", "r",
    }
)
# fmt: on


TOKEN = re.compile(r"[a-z0-9]+(?:[./][a-z0-9]+)*")


_SIBILANT_PLURAL = re.compile(r"(?:ss|x|z|ch|sh)es$")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A deliberately light stemmer: plural and -ing/-ed endings (enough for BM25 here).

    A plural loses its "es" only after a sibilant ("rashes" → "rash", "classes" → "class"),
    elsewhere just its "s", so a singular and its plural meet ("flares" and "flare" → "flare",
    "doses" and "dose" → "dose").
    """
    for suffix, min_len in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if word.endswith(suffix) and len(word) >= min_len and not word.endswith("ss"):
            if suffix == "es" and not _SIBILANT_PLURAL.search(word):
                return word[:-1]
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lightly stemmed terms."""
    return list(_terms(text))


@lru_cache(maxsize=2048)
def _terms(text: str) -> tuple[str, ...]:
    """``tokenize``, kept per text: the sources' sentences are tokenized for every question.
    2048 texts: the bundled corpus's sentences, a few MB (8192 held whole chunks: ~80 MB)."""
    return tuple(stem(t) for t in TOKEN.findall(text.lower()) if t not in STOPWORDS)


WORD = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")
"""A word of lower-cased text, hyphens and apostrophes inside it kept ("post-polio", "don't")."""


def collapse_space(text: str) -> str:
    """All whitespace runs (NBSP included) as single spaces, trimmed."""
    return " ".join(text.split())


def fold(text: str) -> str:
    """Lower case, straight apostrophes, single spaces: what rule patterns are written for."""
    return collapse_space(text.lower().replace("’", "'").replace("‘", "'"))


_MARKUP = re.compile(
    r"<(script|style)\b.*?(</\1\s*>|$)|<[^>]*>|\]\([^)]*\)|\b(?:https?|javascript|data):\S*",
    re.IGNORECASE | re.DOTALL,
)


def strip_markup(text: str) -> str:
    """The words of a message without HTML tags, link targets or URLs.

    Markup in a question is shown back as text (escaped) wherever it is displayed, but it
    is not part of what the user asks, so retrieval and triage look past it.
    """
    return collapse_space(_MARKUP.sub(" ", text).replace("[", " "))


CITE = r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]"
"""One ``[n]`` / ``[1, 2]`` citation marker."""
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SENTENCE_END = re.compile(r"[.!?][\"”’)]*(?:\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s+[A-Z0-9\"“(])")


def markers(text: str) -> list[int]:
    """Every citation number referenced in a text, in order (``[1]``, ``[1, 2]``)."""
    return [int(n) for group in _MARKER.findall(text) for n in group.split(",")]


def answer_sentences(line: str) -> list[str]:
    """Split a line of answer prose at sentence ends, a marker after the full stop kept with it."""
    parts, last = [], 0
    for m in _SENTENCE_END.finditer(line):
        parts.append(line[last : m.end()])
        last = m.end()
    parts.append(line[last:])
    return [p.strip() for p in parts if p.strip()]


@cache
def english() -> Any:
    """The English word list (pyspellchecker's frequency dictionary, edit distance 1), loaded once."""
    from spellchecker import SpellChecker

    return SpellChecker(distance=1)
