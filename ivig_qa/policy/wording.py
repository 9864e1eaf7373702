"""Stage 6: the rules around every answer — input checks, answer shapes, the disclaimer.

The disclaimer is a constant attached by code to every ``Answer`` of every status; no
engine writes it and nothing a user types can remove it.
"""

from __future__ import annotations

import re
import unicodedata

from ivig_qa import data

DISCLAIMER = (
    "This assistant shares general information from a small set of published sources about IVIG. "
    "It is not medical advice and does not know your situation: talk to your doctor or care team "
    "before making any decision about your treatment. If you think you are having a medical "
    "emergency, stop any infusion that is running, tell your nurse, or call your local emergency "
    "number now."
)

_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


_MARKUP = re.compile(
    r"<(script|style)\b.*?(</\1\s*>|$)|<[^>]*>|\]\([^)]*\)|\b(?:https?|javascript|data):\S*",
    re.IGNORECASE | re.DOTALL,
)


def plain_text(question: str) -> str:
    """The words of a question without HTML tags, link targets or URLs.

    Markup in a question is shown back as text (escaped) wherever it is displayed, but it
    is not part of what the user asks, so retrieval and triage look past it.
    """
    return re.sub(r"\s+", " ", _MARKUP.sub(" ", question).replace("[", " ")).strip()


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
        (unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch not in _ALLOWED_CONTROLS) or ch == "\ufffd"
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


def responses() -> dict:
    """The reviewed wording of each answer shape (``data/responses.toml``)."""
    return data.load("responses.toml")


def care_team_questions(message: str) -> list[str]:
    """Questions worth asking the prescriber, picked by what the message is about."""
    text = message.lower()
    picked: list[str] = []
    for group in responses()["ask"]:
        if any(re.search(rf"\b{re.escape(w)}\b", text) for w in group["words"]):
            picked += group["questions"]
            break
    return picked + responses()["general"]["questions"]


def urgent_text(body: str) -> str:
    r = responses()
    return r["urgent"] + (f"\n\n{r['urgent_sources']}\n{body}" if body else "")


def personal_text(message: str, body: str) -> str:
    r = responses()
    asks = "\n".join(f"- {q}" for q in care_team_questions(message))
    sources = f"\n\n{body}" if body else ""
    return f"{r['personal']}{sources}\n\n{r['personal_ask']}\n{asks}"


def answered_text(body: str, generated: bool = False) -> str:
    """The sources' answer under a lead that says honestly whether it is quoted or generated."""
    return f"{responses()['answered_generated' if generated else 'answered']}\n{body}"


def not_in_sources_text(unknown_terms: list[str], body: str, titles: list[str], injection: bool) -> str:
    """Say so plainly, show the closest passage when there is one, list what is covered."""
    r = responses()
    if unknown_terms:
        # The terms are letters and digits only (see triage._WORD), so echoing them is safe.
        head = r["not_in_sources_terms"].format(terms=", ".join(f"“{t}”" for t in unknown_terms))
    else:
        head = r["not_in_sources"]
    parts = [r["injection"], head] if injection else [head]
    if body:
        parts.append(f"{r['closest']}\n{body}")
    parts.append(r["can_help"] + "\n" + "\n".join(f"- {t}" for t in titles))
    return "\n\n".join(parts)
