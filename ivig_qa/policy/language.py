"""Other languages: is a message mostly not English, which language is it, and what is its English part?

The sources are English, so a message mostly in another language gets a fixed reply (in that
language where ``data/responses.toml`` has one) saying so, and any English part is answered.
Language identification is py3langid's packaged model (offline, loaded in the background when
the assistant starts; a message that is plainly English never asks it). Words of other languages
inside an English message ("hola, how often…") are filler, not a subject the sources lack
(``is_foreign_filler``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Set
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ivig_qa.policy.normalise import english

_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_PIECES = re.compile(r"(?<=[.!?;:])\s+|\n+|(?<=,)\s+")
MOSTLY = 0.5  # share of a message's words that are not English for it to count as another language
LIKELY_ENGLISH = 0.8  # at least this share of English words: English, the identifier is not asked
MIN_CONFIDENCE = 0.8  # py3langid's normalised probability
# Between MOSTLY and LIKELY_ENGLISH, another language only when the identifier is this sure: the
# English word list has many short words of other languages ("die", "que", "et").
SURE = 0.95
FILLER_LANGUAGES = ("es", "fr", "de", "pt", "it", "nl")
FILLER_MIN_COUNT = 10_000  # a word this frequent in another language's word list is one of its common words


@dataclass(frozen=True)
class Language:
    """A message's language (ISO 639-1 code) and its English part ("" when none)."""

    code: str
    confidence: float
    english_part: str


_LOADING = threading.Lock()


@cache
def _model():  # py3langid has no type hints
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _identifier():
    with _LOADING:  # one load, whether the preload or an answer gets there first
        return _model()


def preload() -> None:
    """Load the identifier (~1.3 s) in the background when the assistant starts: a message with
    only half its words in the English list asks it, and no answer should wait for the load."""
    threading.Thread(target=_identifier, name="language-identifier", daemon=True).start()


def is_english(word: str, known: Set[str] = frozenset()) -> bool:
    """An English word (pyspellchecker's list), a known word (the sources', chat shorthand), or
    a short ASCII token."""
    low = word.lower()
    return low in known or english().word_frequency[low] >= 1 or (low.isascii() and len(low) <= 2)


def english_share(text: str, known: frozenset[str] = frozenset()) -> float:
    """Share of the words of ``text`` that are English (or known words: the sources', chat shorthand)."""
    words = _WORDS.findall(text)
    if not words:
        return 1.0
    return sum(is_english(w, known) for w in words) / len(words)


def identify(text: str) -> tuple[str, float]:
    """py3langid's language code and confidence for ``text``."""
    code, confidence = _identifier().classify(text)
    return str(code), float(confidence)


def other_language(text: str, known: frozenset[str] = frozenset()) -> Language | None:
    """The message's language when it is mostly not English, else None.

    Cheap first: a message whose words are mostly English never reaches the identifier. One
    whose English words are only half or a little more ("was sind die nebenwirkungen von ivig":
    "was", "die") is another language when the identifier is sure of it.
    """
    share = english_share(text, known)
    if share >= LIKELY_ENGLISH:
        return None
    code, confidence = identify(text)
    if share >= MOSTLY and (code == "en" or confidence < SURE):
        return None
    if code == "en" or confidence < MIN_CONFIDENCE:
        code = "und"  # not English, language unsure: the English wording
    english_part = " ".join(
        p for p in _PIECES.split(text) if len(_WORDS.findall(p)) >= 3 and english_share(p, known) >= 0.8
    )
    return Language(code, confidence, english_part.strip())


def filler_words(cache: Path | None = None) -> frozenset[str]:
    """The common words (``FILLER_MIN_COUNT``) of ``FILLER_LANGUAGES``, from pyspellchecker's lists.

    Reading those lists costs over a second, so the result is kept in ``cache`` (named by the
    package's version) and read from there by later processes; the assistant loads it when it
    starts, never in the middle of an answer. An unwritable cache folder only costs the time.
    """
    import importlib.metadata

    version = importlib.metadata.version("pyspellchecker")
    path = cache.expanduser() / f"filler-words-{version}.txt" if cache is not None else None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError):
            return frozenset(path.read_text("utf-8").split())
    from spellchecker import SpellChecker

    words: set[str] = set()
    for code in FILLER_LANGUAGES:
        frequency = SpellChecker(language=code, distance=1).word_frequency
        words |= {w for w, n in frequency.items() if n >= FILLER_MIN_COUNT}
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_text("\n".join(sorted(words)), "utf-8")
            partial.replace(path)
    return frozenset(words)


def is_foreign_filler(word: str, filler: frozenset[str]) -> bool:
    """A common word of another language (``filler``) and not of English ("hola", "bitte", "merci")."""
    low = word.lower()
    if english().word_frequency[low] >= 100:
        return False
    return low in filler
