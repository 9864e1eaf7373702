"""Follow-up questions rewritten into standalone questions, without an LLM.

"and for lupus?" after "what reactions can infants get from ivig?" must retrieve lupus
reactions, not infant ones; "how long beforehand?" after "do babies get premeds?" must
keep the premeds. A message that stands on its own ("can I get the flu shot?" after other
questions) is retrieved on its own words: history is used only when the message is incomplete
(``data/follow_ups.toml``: it names no subject of its own, or points back to earlier talk). The
rewrite keeps the earlier question's words as context and, when the follow-up names a new
topic, drops the earlier topic's words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from ivig_qa import data
from ivig_qa.policy.scope import question_part
from ivig_qa.text import WORD, fold, stem, tokenize
from ivig_qa.types import Message


@cache
def _topic_terms() -> dict[str, set[str]]:
    """Topic name → its words (``data/topics.toml``)."""
    return {name: set(tokenize(words)) for name, words in data.load("topics.toml")["topics"].items()}


@dataclass(frozen=True)
class FollowUpRules:
    """The words that tell a complete message from one that needs the conversation."""

    openers: re.Pattern[str]
    personal: frozenset[str]
    demonstrative: frozenset[str]
    question_words: frozenset[str]
    fragment_terms: int
    enough_subjects: int
    domain: frozenset[str]
    long_sentences: int
    long_words: int
    generic: frozenset[str]

    @classmethod
    @cache
    def load(cls) -> FollowUpRules:
        raw = data.load("follow_ups.toml")
        return cls(
            re.compile(raw["openers"]),
            frozenset(raw["personal"]),
            frozenset(raw["demonstrative"]),
            frozenset(raw["question_words"]),
            int(raw["fragment_terms"]),
            int(raw["enough_subjects"]),
            frozenset(t for w in raw["domain"] for t in tokenize(w)),
            int(raw["long_sentences"]),
            int(raw["long_words"]),
            frozenset(stem(w) for w in raw["generic"]) | frozenset(raw["generic"]),
        )


MAX_STANDALONE_CONTEXT_TERMS = 5
_FOLLOW_UP_MARK = re.compile(r"\(follow-up to: ([^)]*)\)")
_SENTENCE_END = re.compile(r"[.!?]+")


def topics_of(text: str) -> set[str]:
    terms = set(tokenize(text))
    return {name for name, words in _topic_terms().items() if terms & words}


def _always_known(_term: str) -> float:
    return 1.0


def is_subject(term: str, weight: Callable[[str], float] = _always_known) -> bool:
    """A word that names what a message is about: a topic word, or a sources' word that is not
    a generic question word (``weight`` is the term's IDF in the index, 0 when unseen)."""
    rules = FollowUpRules.load()
    topic = any(term in words for words in _topic_terms().values())
    return topic or (term not in rules.generic and weight(term) > 0)


def is_follow_up(message: str, weight: Callable[[str], float] = _always_known) -> bool:
    """True when the message needs the conversation: it is not complete on its own."""
    return not is_complete(message, weight)


def is_complete(message: str, weight: Callable[[str], float] = _always_known) -> bool:
    """Names its own subject and points back to nothing outside itself (``data/follow_ups.toml``).

    A long message (a story with its question) carries its own context. A continuation opener
    ("and", "what about") or a demonstrative ("that", "those") points back unless the message
    names enough of its own subject matter; a personal pronoun ("it", "they") is resolved when the
    message names the treatment or a topic (then "it" is IVIG, "they" the people who give it) or
    enough subject matter of its own.
    """
    rules = FollowUpRules.load()
    text = fold(message)
    words = WORD.findall(text)
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) >= rules.long_sentences or len(words) >= rules.long_words:
        return True
    subjects = {t for t in tokenize(text) if is_subject(t, weight)}
    if not subjects:
        return False
    if len(tokenize(text)) <= rules.fragment_terms and not set(words) & rules.question_words:
        return False  # a fragment: "for kids?", "lupus?"
    enough = len(subjects) >= rules.enough_subjects
    anchored = (
        enough
        or bool(subjects & rules.domain)
        or any(s in w for s in subjects for w in _topic_terms().values())
    )
    if set(words) & rules.personal and not anchored:
        return False
    opener = rules.openers.match(text)
    if opener and not enough:
        return False
    named_before = False  # a subject in an earlier sentence of the message
    for sentence in sentences:
        previous: str | None = None
        for word in WORD.findall(sentence):
            pointing = word in rules.demonstrative and not (
                word == "that" and previous and tokenize(previous)
            )
            if pointing and not (enough or named_before):
                return False
            previous = word
        named_before = named_before or any(is_subject(t, weight) for t in tokenize(sentence))
    return True


def _context_terms(previous: str, drop_topics: set[str], weight: Callable[[str], float]) -> list[str]:
    """The earlier question's most specific words, minus the topics the follow-up replaces.

    Only the few rarest words carry on (by ``weight``, the index's IDF): generic words
    from the earlier question would otherwise drown what the follow-up asks.
    """
    drop = set().union(*(_topic_terms()[t] for t in drop_topics)) if drop_topics else set()
    words = re.findall(r"[\w/'-]+", _FOLLOW_UP_MARK.sub(r" \1 ", previous))
    kept = list(dict.fromkeys(w for w in words if tokenize(w) and not (set(tokenize(w)) & drop)))
    top = set(sorted(kept, key=lambda w: -max(weight(t) for t in tokenize(w)))[:MAX_STANDALONE_CONTEXT_TERMS])
    return [w for w in kept if w in top]


def condense(
    message: str, history: Sequence[Message], weight: Callable[[str], float] = lambda _t: 1.0
) -> str:
    """The message as a standalone question, using the user's earlier messages as context.

    A long message is first cut to what it asks (``policy.scope.question_part``).

    ``weight`` scores a term's specificity (the retriever passes its IDF).
    """
    message = question_part(message)  # a long message: what it asks, not the story before it
    user_turns = [m.content for m in history if m.role == "user" and m.content.strip()]
    if not user_turns or not is_follow_up(message, weight):
        return message
    previous = user_turns[-1]
    # A follow-up of a follow-up: resolve the earlier one first so its topic carries on. When the
    # earlier one stood on its own ("what did lloyd find?" after "were there trials for me/cfs?"),
    # the conversation's subject is in the question before it: both lend their words.
    if len(user_turns) > 1:
        earlier = [Message(role="user", content=t) for t in user_turns[:-1]]
        resolved = condense(previous, earlier, weight)
        if resolved == question_part(previous):
            resolved = f"{resolved} {condense(user_turns[-2], earlier[:-1], weight)}"
        previous = resolved
    new_topics = topics_of(message)
    old_topics = topics_of(previous) - new_topics if new_topics else set()
    context = _context_terms(previous, old_topics, weight)
    return f"{message} (follow-up to: {' '.join(context)})" if context else message
