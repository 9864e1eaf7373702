"""Input limits owned by the domain: what a question and its history may be.

One rule for every entry point (Python API, CLI, HTTP API, chat): a message that breaks it
raises ``InvalidQuestion`` naming the field, which the API turns into a 422 and the
assistant into an ``invalid_input`` answer. Nothing over a limit is truncated silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from ivig_qa.types import Message


class InvalidQuestion(ValueError):
    """The question cannot be answered as given; the message is shown to the user.

    ``field`` names the offending part of a request ("question", "history", "history[3].content").
    """

    def __init__(self, message: str, field: str = "question") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class InputLimits:
    """The sizes a request may have (from ``settings.policy``)."""

    max_question_chars: int
    max_history_turns: int
    max_history_message_chars: int


# Control characters (Cc) but newline, tab and CR; surrogates (Cs); private use (Co); U+FFFD.
_UNREADABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffd"
    "\U000f0000-\U000ffffd\U00100000-\U0010fffd]"
)


def unreadable(text: str) -> bool:
    """Text with what is not readable text: control characters (but newline, tab, CR),
    surrogates, private-use characters, or U+FFFD (a decoding error). One regex scan, so a
    maximal history costs about a millisecond."""
    return _UNREADABLE.search(text) is not None


def clean_question(raw: object, max_chars: int) -> str:
    """Return the question ready for the pipeline, or raise ``InvalidQuestion``.

    Rejects what is not a question at all (empty, binary, control characters) and what
    is too long to be a question, with a message a patient understands.
    """
    if not isinstance(raw, str):
        raise InvalidQuestion("Please type your question as text.")
    text = unicodedata.normalize("NFC", raw).strip()
    if not text:
        raise InvalidQuestion("Please type a question, for example: “How often is IVIG given?”")
    if unreadable(text):
        raise InvalidQuestion(
            "Your message contains characters that are not readable text (binary or control "
            "characters). Please type your question in plain words."
        )
    if len(text) > max_chars:
        raise InvalidQuestion(
            f"Your message is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Please shorten it to the question you would like answered."
        )
    return text


def check_history(history: Sequence[Message | dict] | None, limits: InputLimits) -> list[Message]:
    """The history as ``Message`` turns, or ``InvalidQuestion`` naming the turn that breaks a rule."""
    items = list(history or [])
    if len(items) > limits.max_history_turns:
        raise InvalidQuestion(
            f"The conversation history has {len(items)} messages; at most "
            f"{limits.max_history_turns} are accepted.",
            field="history",
        )
    turns: list[Message] = []
    for i, item in enumerate(items):
        try:
            turn = item if isinstance(item, Message) else Message.model_validate(item)
        except ValidationError as exc:
            raise InvalidQuestion(
                "The conversation history is malformed: each turn needs a role "
                "('user' or 'assistant') and text content.",
                field=f"history[{i}]",
            ) from exc
        if len(turn.content) > limits.max_history_message_chars:
            raise InvalidQuestion(
                f"Message {i + 1} of the conversation history is {len(turn.content):,} characters "
                f"long; the limit is {limits.max_history_message_chars:,}.",
                field=f"history[{i}].content",
            )
        if unreadable(turn.content):
            raise InvalidQuestion(
                f"Message {i + 1} of the conversation history contains characters that are not "
                "readable text (binary or control characters).",
                field=f"history[{i}].content",
            )
        turns.append(turn)
    return turns
