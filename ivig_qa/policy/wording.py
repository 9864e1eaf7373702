"""The fixed wording around every answer shape, and the disclaimer.

The disclaimer is a constant attached by code to every ``Answer`` of every status; no
engine writes it and nothing a user types can remove it. The reviewed texts of the
answer shapes live in ``data/responses.toml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ivig_qa import data
from ivig_qa.types import Decision, Status

DISCLAIMER = (
    "This assistant shares general information from a small set of published sources about IVIG. "
    "It is not medical advice and does not know your situation: talk to your doctor or care team "
    "before making any decision about your treatment. If you think you are having a medical "
    "emergency, stop any infusion that is running, tell your nurse, or call your local emergency "
    "number now."
)


# An answer names at most this many unknown terms, each cut to this length: a message full of
# made-up words gets a short answer, which a client can send back as history within its limits.
MAX_ECHOED_TERMS = 5
MAX_ECHOED_TERM_CHARS = 40


def echoed_terms(terms: tuple[str, ...]) -> str:
    """The first few unknown terms, quoted, each no longer than ``MAX_ECHOED_TERM_CHARS``."""
    cut = [t if len(t) <= MAX_ECHOED_TERM_CHARS else t[: MAX_ECHOED_TERM_CHARS - 1] + "…" for t in terms]
    return ", ".join(f"“{t}”" for t in cut[:MAX_ECHOED_TERMS])


def responses() -> dict:
    """The reviewed wording of each answer shape (``data/responses.toml``)."""
    return data.load("responses.toml")


@dataclass(frozen=True)
class Frame:
    """The fixed text around the sources' part of an answer.

    The answer reads ``head + (body_lead + body if body else "") + tail``, so a streamed
    answer can send ``head`` before the engine has composed anything.
    """

    head: str
    body_lead: str = "\n"
    tail: str = ""

    def wrap(self, body: str) -> str:
        return self.head + (self.body_lead + body if body else "") + self.tail


def care_team_questions(message: str) -> list[str]:
    """Questions worth asking the prescriber, picked by what the message is about."""
    text = message.lower()
    picked: list[str] = []
    for group in responses()["ask"]:
        if any(re.search(rf"\b{re.escape(w)}\b", text) for w in group["words"]):
            picked += group["questions"]
            break
    return picked + responses()["general"]["questions"]


def _language_reply(code: str) -> str:
    replies = responses()["language"]
    return replies.get(code) or replies["und"]


def _answered_head(decision: Decision, generated: bool, quoted: bool = True) -> str:
    """The lines before an answered body: notes (injection, language, symptom, uncovered part) first."""
    r = responses()
    lines: list[str] = []
    if decision.language:
        lines.append(_language_reply(decision.language))
        lines.append(r["language"]["english_part"])
    if decision.injection:
        lines.append(r["injection_note"])
    if decision.symptom == "mild":
        lines.append(r["symptom_mild"])
    if decision.uncovered:
        # The terms are letters and digits only (see text.WORD), so echoing them is safe.
        lines.append(r["uncovered"].format(parts=", ".join(f"“{t}”" for t in decision.uncovered)))
    if quoted:
        lines.append(r["answered_generated" if generated else "answered"])
    return "\n\n".join(lines)


def frame(
    decision: Decision, message: str, titles: list[str], generated: bool = False, quoted: bool = True
) -> Frame:
    """The wording for ``decision``'s status (``message`` picks the care-team questions);
    ``quoted``: the answer shows quotes (a symptom the sources are not close to shows none)."""
    r = responses()
    if decision.status == Status.URGENT_CARE:
        # A concept with lines of its own (a crisis line, poison control) adds them, once each.
        fired = dict.fromkeys(
            x.id.removeprefix("urgent.") for x in decision.reasons if x.id.startswith("urgent.")
        )
        extra = [r["urgent_for"][c] for c in fired if c in r["urgent_for"]]
        return Frame("\n".join([r["urgent"], *extra]), f"\n\n{r['urgent_sources']}\n")
    if decision.status == Status.PERSONAL_ADVICE:
        asks = "\n".join(f"- {q}" for q in care_team_questions(message))
        return Frame(r["personal"], "\n\n", f"\n\n{r['personal_ask']}\n{asks}")
    if decision.status == Status.NOT_IN_SOURCES:
        if decision.language:
            return Frame(_language_reply(decision.language), "\n\n", "")
        if decision.unknown_terms:
            # The terms are letters and digits only (see text.WORD), so echoing them is safe.
            head = r["not_in_sources_terms"].format(terms=echoed_terms(decision.unknown_terms))
        else:
            head = r["not_in_sources"]
        if decision.injection:
            head = f"{r['injection']}\n\n{head}"
        covered = r["can_help"] + "\n" + "\n".join(f"- {t}" for t in titles)
        return Frame(head, f"\n\n{r['closest']}\n", f"\n\n{covered}")
    tail = f"\n\n{r['symptom_past']}" if decision.symptom == "past" else ""
    return Frame(_answered_head(decision, generated, quoted), tail=tail)
