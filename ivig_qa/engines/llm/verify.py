"""Checking a generated sentence against source text: numbers, units, names, words, negation,
then the model's own yes/no (``SupportJudge``); ``LLMSupportChecker`` is that check for the eval.

Every refusal is a ``Problem``: the reason in words and a short ``code`` (``number``, ``unit``,
``name``, ``term``, ``overlap``, ``negation``, ``judge``, ``budget``…) that the engine reports per
dropped sentence and the eval counts. When the words alone decide (a verbatim quote, or nearly every
word, number and name in the quote and no added negation), the model is not asked.

Words are compared by Snowball stem ("headaches" = "headache"). A plain-language summary
paraphrases: a sentence with under half the quote's words still reaches the judge when every
rare word in it (a term: "renal", "anaphylaxis") is the quote's and the words weighted by how
much each says (English frequency) reach the bar; the judge is skipped only on the plain count.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from ivig_qa.engines.llm.backends import (
    LLMUnavailableError,
    LoadedModel,
    load_chat_model,
    message_text,
    require_extra,
)
from ivig_qa.engines.llm.prompts import judge_messages
from ivig_qa.settings import Settings
from ivig_qa.text import STOPWORDS, WORD, collapse_space

_NUMBER_WORDS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "twenty": "20",
    "hundred": "100",
    "thousand": "1000",
    "once": "1",
    "twice": "2",
    "thrice": "3",
}
# Units of time and frequency: "monthly" in a sentence needs months in its source.
_UNIT = re.compile(
    r"\b(?:(second|minute|hour|day|week|month|year)s?|(daily)|(weekly)|(monthly)|(yearly|annual(?:ly)?))\b",
    re.IGNORECASE,
)
_UNIT_OF = {"daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}
# Units of measure as the sources abbreviate them ("2 g/kg"): a plain answer spells them out
# ("2 grams per kilogram"), the same unit; a different one ("milligrams") is a different dose.
_UNIT_ABBREVIATION = {
    **dict.fromkeys(("gram", "grams", "gramme", "grammes"), "g"),
    **dict.fromkeys(("kilogram", "kilograms", "kilo", "kilos"), "kg"),
    **dict.fromkeys(("milligram", "milligrams"), "mg"),
    **dict.fromkeys(("microgram", "micrograms"), "mcg"),
    **dict.fromkeys(("millilitre", "millilitres", "milliliter", "milliliters"), "ml"),
}
# A spelled unit anywhere; an abbreviation only after a number or a slash ("2 g/kg", "400mg"), so
# the "g" of "e.g." is none.
_MEASURE = re.compile(
    r"(?<![A-Za-z])(?:" + "|".join(sorted(_UNIT_ABBREVIATION, key=len, reverse=True)) + r")(?![A-Za-z])"
    r"|(?:(?<=\d)|(?<=\d )|(?<=/))(?:"
    + "|".join(sorted(set(_UNIT_ABBREVIATION.values()), key=len, reverse=True))
    + r")(?![A-Za-z])",
    re.IGNORECASE,
)
# "100K" and "$5k" are thousands, "2M" millions: the sources write amounts both ways.
_NUMBER = re.compile(
    r"\d+(?:,\d{3})*(?:\.\d+)?(?:[kKmM]\b)?|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE
)
_SCALE = {"k": 1000, "m": 1_000_000}
# A word starts at a word boundary: the "K" of "$100K" is part of a number, not a name.
_ENTITY = re.compile(r"(?<![\w'’-])[A-Za-z][A-Za-z0-9'’-]*")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nor|neither|cannot|without|unlikely|lack|lacks|unknown|unclear)\b|n['’]t\b",
    re.IGNORECASE,
)
# Words every answer may use without the passage spelling them out.
_FREE_ENTITIES = frozenset({"ivig", "i", "ig", "iv"})


# "one" as a pronoun is not a number: "the flu one", "this one", "no one", "one of them".
_PRONOUN_ONE = re.compile(
    r"\b(?:the|this|that|each|every|any|no|which|another)\s+(?:[a-z-]+\s+){0,2}?ones?\b|\bones?\s+(?:of|another)\b",
    re.IGNORECASE,
)


def numbers(text: str) -> set[str]:
    """Numbers as values: "1,000" = "1000", "2.0" = "2", "two" = "2" ("the flu one" has none)."""
    out: set[str] = set()
    for raw in _NUMBER.findall(_PRONOUN_ONE.sub(" ", text)):
        word = _NUMBER_WORDS.get(raw.lower())
        value = word or raw.replace(",", "")
        scale = _SCALE.get(value[-1].lower(), 1) if value[-1].isalpha() else 1
        value = value.rstrip("kKmM") if scale > 1 else value
        try:
            out.add(format(float(value) * scale, ".15g"))
        except ValueError:
            out.add(value)
    return out


def units(text: str) -> set[str]:
    """Time units and frequencies, canonical ("weekly" = "week", "annually" = "year"), and units
    of measure as their abbreviation ("milligrams" = "mg")."""
    out: set[str] = set()
    for m in _UNIT.finditer(text):
        word = next(g for g in m.groups() if g).lower()
        out.add(_UNIT_OF.get(word, "year" if word.startswith("annual") else word))
    for m in _MEASURE.finditer(text):
        word = m.group().lower()
        out.add(_UNIT_ABBREVIATION.get(word, word))
    return out


def entities(statement: str) -> list[str]:
    """Named things: acronyms and mixed-case words anywhere, capitalised words after the first."""
    found: list[str] = []
    for i, m in enumerate(_ENTITY.finditer(statement)):
        word = re.sub(r"['’]s$", "", m.group()).strip("'’-")
        if not word or word.lower() in _FREE_ENTITIES:
            continue
        inner_caps = any(ch.isupper() for ch in word[1:])
        if inner_caps or (i > 0 and word[0].isupper()):
            found.append(word)
    return found


def _has_word(text_low: str, word: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}", text_low) is not None


class Problem(str):
    """Why a source does not support a sentence, in words, with a short ``code`` for counting."""

    code: str

    def __new__(cls, text: str, code: str) -> Problem:
        made = super().__new__(cls, text)
        made.code = code
        return made


# What each code means, for the eval report's table of dropped sentences.
PROBLEM_CODES = {
    "number": "a number the quote does not have",
    "unit": "a unit of time or measure the quote does not have",
    "name": "a name the quote does not have",
    "term": "a rare word (a term) the quote does not have",
    "overlap": "too few of its words are in the quote (weighted by how much each word says)",
    "negation": "negates what the quote does not",
    "judge": "the model judge said no",
    "budget": "no judge calls or time left",
    "markup": "contains markup",
    "no_citation": "cites no quote and no quote supports it",
    "limit": "over the sentence limit",
    "words": "over the summary's word limit",
}
# A sentence that has at least this share of its content words in the quote, with every number,
# unit and name and no added negation, is supported on its words alone: no judge call.
DECISIVE_OVERLAP = 0.85


# A word rarer than this in English (pyspellchecker's counts) is a term: a claim of its own
# ("renal", "infantile", "anaphylaxis") that the quote must have; plain words may paraphrase.
RARE_WORD_COUNT = 5000
# The treatment's own names and words ("immunoglobulin", "infusion", IVIG spelled out) are free:
# a summary may name what the quote is about.
_FREE_TERMS = frozenset({"intravenous", "intravenously"})


@cache
def _stemmer():  # snowballstemmer has no types
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@cache
def _free_terms() -> frozenset[str]:
    from ivig_qa.policy.triage import Rules

    rules = Rules.load()
    return frozenset(_stemmer().stemWords(sorted(rules.ivig_names | rules.treatment_words | _FREE_TERMS)))


def _word_counts() -> Mapping[str, int]:
    from ivig_qa.policy.normalise import english

    return english().word_frequency


def _singulars(word: str) -> list[str]:
    """The word and the singulars it may be the plural of ("medicines" → "medicine"), every
    candidate: not ``text.stem``, whose one BM25 term is not always a word ("aches" → "ach")."""
    forms = [word]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.append(word[:-1])
    return forms


def word_count(word: str) -> int:
    """How common a word is in English, as its most common singular: a plural of a plain word
    ("medicines", "jabs" is rarer than "jab") is as plain as the word."""
    counts = _word_counts()
    return max(counts[form] for form in _singulars(word))


def information(word: str) -> float:
    """How much a word says, from its English frequency: 1.0 for a rare word, about
    0.25 for "people" or "may" (so paraphrased plain words weigh little, terms much)."""
    return 1.0 / (1.0 + math.log10(1.0 + word_count(word) / 1000))


def content_terms(text: str) -> dict[str, str]:
    """Content words (no stop words) by Snowball stem, so "headaches" meets "headache" and
    "decreasing" meets "decrease", and a unit by its abbreviation ("grams" meets "g"): stem →
    the word as written."""
    written = WORD.findall(text.lower().replace("’", "'"))
    parts = [part for w in written for part in w.removesuffix("'s").split("-") if part]  # post-polio
    words = [w for w in parts if w not in STOPWORDS and w.replace("'", "") not in STOPWORDS]
    stems = _stemmer().stemWords([_UNIT_ABBREVIATION.get(w, w) for w in words])
    return dict(zip(stems, words, strict=True))


def word_share(statement: str, passage: str, weighted: bool = False) -> float:
    """The share of the statement's content words that the passage has (1.0 for none).

    ``weighted``: each word counts by its ``information`` (the treatment's names as found), so
    a paraphrase in plain words keeps the share of the terms it got right. That share decides
    only whether a sentence is worth the judge's time; skipping the judge (``DECISIVE_OVERLAP``)
    takes every word counted alike, so a changed plain word ("always" for "rarely") is still
    read by the judge.
    """
    terms = content_terms(statement)
    if not terms:
        return 1.0
    found = content_terms(passage).keys() | (_free_terms() if weighted else frozenset())
    weight = {stem: information(word) if weighted else 1.0 for stem, word in terms.items()}
    return sum(w for stem, w in weight.items() if stem in found) / sum(weight.values())


def missing_terms(statement: str, passage: str) -> list[str]:
    """The statement's rare words (terms) that the passage lacks (the treatment's names aside)."""
    found = content_terms(passage).keys() | _free_terms()
    return [
        word
        for stem, word in content_terms(statement).items()
        if stem not in found and word_count(word) < RARE_WORD_COUNT
    ]


def lexical_problem(statement: str, passage: str, min_overlap: float) -> Problem | None:
    """Why ``passage`` cannot support ``statement`` on its words alone (None: it may)."""
    missing_numbers = numbers(statement) - numbers(passage)
    if missing_numbers:
        return Problem(f"number(s) not in the source: {', '.join(sorted(missing_numbers))}", "number")
    missing_units = units(statement) - units(passage)
    if missing_units:
        return Problem(f"unit(s) not in the source: {', '.join(sorted(missing_units))}", "unit")
    low = passage.lower()
    missing = [e for e in entities(statement) if not _has_word(low, e)]
    if missing:
        return Problem(f"name(s) not in the source: {', '.join(missing)}", "name")
    share = word_share(statement, passage)
    if share < min_overlap:
        # A paraphrase in plain words may still go to the judge, when every term is the quote's
        # and the words weighted by what they say reach the bar.
        terms = missing_terms(statement, passage)
        if terms:
            return Problem(f"term(s) not in the source: {', '.join(terms)}", "term")
        if word_share(statement, passage, weighted=True) < min_overlap:
            return Problem(f"only {share:.0%} of its words are in the source", "overlap")
    if _NEGATION.search(statement) and not _NEGATION.search(passage):
        return Problem("negates what the source does not", "negation")
    return None


@dataclass
class Budget:
    """Judge calls and time left for verifying one answer."""

    max_calls: int
    deadline: float
    calls: int = 0
    decided_by_words: int = 0  # supported on the words alone (no judge call needed)


class SupportJudge:
    """Decides whether passage text supports a statement: lexical checks, then the model."""

    def __init__(self, model: LoadedModel | None, settings: Settings) -> None:
        self.model = model if settings.llm.judge else None
        self.min_overlap = settings.llm.min_overlap

    @staticmethod
    def verbatim(statement: str, passage: str) -> bool:
        """The statement is quoted from the passage (spacing, case and final stop aside)."""
        claim = collapse_space(statement).rstrip(".!?").casefold()
        return bool(claim) and claim in collapse_space(passage).casefold()

    def judge(self, statement: str, passage: str) -> bool:
        """The model's yes/no (True when no judge is configured)."""
        if self.model is None:
            return True
        with self.model.lock:
            reply = self.model.chat.invoke(judge_messages(statement, passage), max_tokens=3, temperature=0.0)
        return message_text(reply.content).strip().lower().lstrip("\"'*").startswith("yes")

    def check(self, statement: str, passage: str, budget: Budget | None = None) -> Problem | None:
        """None when supported, else the reason. The words decide when they can: a verbatim
        quote, or a sentence made of the quote's words (``DECISIVE_OVERLAP``), needs no model.

        With a ``budget``, a model call is made only while calls and time are left (and counted).
        """
        if self.verbatim(statement, passage):
            return None
        problem = lexical_problem(statement, passage, self.min_overlap)
        if problem:
            return problem
        if word_share(statement, passage) >= DECISIVE_OVERLAP:
            if budget is not None:
                budget.decided_by_words += 1
            return None
        if budget is not None and self.model is not None:
            if budget.calls >= budget.max_calls:
                return Problem("verification budget used up", "budget")
            if time.perf_counter() > budget.deadline:
                return Problem("verification time limit", "budget")
            budget.calls += 1
        if self.judge(statement, passage):
            return None
        return Problem("the judge says the source does not support it", "judge")


class LLMSupportChecker:
    """``SupportChecker`` for ``ivig-qa eval --checker llm``: the engine's own verification."""

    name = "llm"

    def __init__(self, judge: SupportJudge) -> None:
        self._judge = judge

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LLMSupportChecker:
        settings = settings or Settings()
        try:
            require_extra(settings.llm.backend)
        except LLMUnavailableError as exc:
            raise ValueError(f"--checker llm: {exc}") from None
        return cls(_LazyJudge(settings))

    def supports(self, statement: str, passages: list[str]) -> bool:
        return self._judge.check(statement, " ".join(passages)) is None


class _LazyJudge(SupportJudge):
    """Loads the model on the first check (after the assistant, which may share it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(None, settings)
        self._settings = settings
        self._loaded = not settings.llm.judge

    def judge(self, statement: str, passage: str) -> bool:
        if not self._loaded:
            self.model = load_chat_model(self._settings)
            self._loaded = True
        return super().judge(statement, passage)
