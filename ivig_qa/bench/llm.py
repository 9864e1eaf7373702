"""The LLM engine's latency as a patient waits for it: first visible text (the lead), the
summary's first token, and the full verified answer, warm, over a few answerable questions; and
the first visible text of a few messages that tell of a symptom now, which the second opinion
on urgency reads before anything is shown.

Measured through ``Assistant.stream`` (what the SSE endpoint and the chat pull), in the bench's
own process; skipped (``None``) when the ``llm`` extra or its model is not there.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ivig_qa.bench.measure import Stats
from ivig_qa.settings import Settings

SECOND_OPINION = ("second_opinion.", "urgent.second_opinion")  # the reasons it gives, asked


@dataclass
class LLMLatencyResult:
    """``lead``: the question sent → the lead on screen; ``summary_first_token``: → the summary's
    first token; ``full``: → the final, verified answer. ``engines`` counts what answered.
    ``told_first_text``: a message telling of a symptom → its first visible text (the head or the
    lead), after triage's second opinion; ``told_asked``: how many of them it was asked about."""

    model: str
    questions: int
    rounds: int
    lead: Stats
    summary_first_token: Stats
    full: Stats
    engines: dict[str, int] = field(default_factory=dict)
    told_first_text: Stats | None = None
    told_asked: int = 0


def measure_llm(
    settings: Settings, questions: list[str], rounds: int = 1, told: list[str] | None = None
) -> LLMLatencyResult | None:
    """Warm LLM-engine latency over ``questions`` (one warm-up answer first), and the first
    visible text of the ``told`` messages; None when the LLM engine cannot run here."""
    from ivig_qa.assistant import Assistant
    from ivig_qa.engines.base import Lead
    from ivig_qa.engines.llm import LLMUnavailableError
    from ivig_qa.types import Answer

    if not questions:
        return None
    try:
        assistant = Assistant.load(settings.updated(engine="llm"), build=False)
    except LLMUnavailableError:
        return None
    assistant.ask(questions[0])  # warm: the model loaded, the system prompt's prefix evaluated
    leads: list[float] = []
    firsts: list[float] = []
    fulls: list[float] = []
    engines: Counter[str] = Counter()
    for _ in range(rounds):
        for q in questions:
            began = time.perf_counter()
            led = first = None
            for piece in assistant.stream(q):
                now = (time.perf_counter() - began) * 1000
                if isinstance(piece, Answer):
                    fulls.append(now)
                    engines[piece.engine.split(":")[0].split(" (")[0] + _why(piece.engine)] += 1
                elif isinstance(piece, Lead):
                    led = now
                elif led is not None and first is None and piece.strip():
                    first = now
            if led is not None:
                leads.append(led)
            if first is not None:
                firsts.append(first)
    told_firsts: list[float] = []
    asked = 0
    for message in told or []:
        began = time.perf_counter()
        shown = None
        for piece in assistant.stream(message):
            if shown is None and (isinstance(piece, Lead) or (isinstance(piece, str) and piece.strip())):
                shown = (time.perf_counter() - began) * 1000
            if isinstance(piece, Answer):
                asked += any(r.id.startswith(SECOND_OPINION) for r in piece.reasons)
        if shown is not None:
            told_firsts.append(shown)
    return LLMLatencyResult(
        assistant.engine.name,
        len(questions),
        rounds,
        Stats.of(leads),
        Stats.of(firsts),
        Stats.of(fulls),
        dict(engines),
        Stats.of(told_firsts) if told_firsts else None,
        asked,
    )


def _why(engine: str) -> str:
    """ " (fallback: timeout)" for "extractive (llm fallback: timeout)"; "" for a generated one."""
    return f" ({engine.split('(llm ', 1)[1]}" if "(llm " in engine else ""
