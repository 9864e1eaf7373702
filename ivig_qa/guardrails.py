"""Stage 6: the rules around every answer — input checks and the fixed disclaimer.

The disclaimer is a constant attached by code to every ``Answer`` of every status; no
engine writes it and nothing a user types can remove it.
"""

from __future__ import annotations

import unicodedata

DISCLAIMER = (
    "This assistant shares general information from a small set of published sources about IVIG. "
    "It is not medical advice and does not know your situation: talk to your doctor or care team "
    "before making any decision about your treatment. If you think you are having a medical "
    "emergency, stop any infusion that is running, tell your nurse, or call your local emergency "
    "number now."
)

_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


class InvalidQuestion(ValueError):
    """The question cannot be answered as given; the message is shown to the user."""


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
    if any(
        unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch not in _ALLOWED_CONTROLS or ch == "\ufffd"
        for ch in text
    ):
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
