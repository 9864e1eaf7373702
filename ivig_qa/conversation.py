"""Follow-up questions rewritten into standalone questions, without an LLM.

"and for lupus?" after "what reactions can infants get from ivig?" must retrieve lupus
reactions, not infant ones; "how long beforehand?" after "do babies get premeds?" must
keep the premeds. The rewrite keeps the earlier question's words as context and, when
the follow-up names a new topic, drops the earlier topic's words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache

from ivig_qa import data
from ivig_qa.text import tokenize
from ivig_qa.types import Message

# A message that opens like this continues the conversation.
_FOLLOW_UP_OPENERS = re.compile(
    r"^(and|so|ok|okay|also|then|but|what about|how about|what if|and what|same|is that|are those|"
    r"does that|do they|did they|would that|which one|why|how come|really)\b",
    re.IGNORECASE,
)
# Words that point back at something said earlier.
_REFERS_BACK = re.compile(
    r"\b(it|its|that|this|they|them|their|those|these|there|one|ones|he|she|his|her|same|then)\b",
    re.IGNORECASE,
)


@cache
def _topic_terms() -> dict[str, set[str]]:
    """Topic name → its words (``data/topics.toml``)."""
    return {name: set(tokenize(words)) for name, words in data.load("topics.toml")["topics"].items()}


MAX_STANDALONE_CONTEXT_TERMS = 5
_FOLLOW_UP_MARK = re.compile(r"\(follow-up to: ([^)]*)\)")
SHORT_QUESTION_TERMS = 3


def topics_of(text: str) -> set[str]:
    terms = set(tokenize(text))
    return {name for name, words in _topic_terms().items() if terms & words}


def is_follow_up(message: str) -> bool:
    """Short, opens like a continuation, or points back with a pronoun."""
    terms = [t for t in tokenize(message) if t != "ivig"]
    return (
        len(terms) <= SHORT_QUESTION_TERMS
        or bool(_FOLLOW_UP_OPENERS.match(message.strip()))
        or bool(_REFERS_BACK.search(message))
    )


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

    ``weight`` scores a term's specificity (the retriever passes its IDF).
    """
    user_turns = [m.content for m in history if m.role == "user" and m.content.strip()]
    if not user_turns or not is_follow_up(message):
        return message
    previous = user_turns[-1]
    # A follow-up of a follow-up: resolve the earlier one first so its topic carries on.
    if len(user_turns) > 1:
        previous = condense(previous, [Message(role="user", content=t) for t in user_turns[:-1]], weight)
    new_topics = topics_of(message)
    old_topics = topics_of(previous) - new_topics if new_topics else set()
    context = _context_terms(previous, old_topics, weight)
    return f"{message} (follow-up to: {' '.join(context)})" if context else message
