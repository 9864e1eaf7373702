"""The LLM engine's latency as a patient waits for it: first visible text (the lead), the
summary's first token, and the full verified answer, warm, over a few answerable questions.

Measured through ``Assistant.stream`` (what the SSE endpoint and the chat pull), in the bench's
own process; skipped (``None``) when the ``llm`` extra or its model is not there.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ivig_qa.bench.measure import Stats
from ivig_qa.settings import Settings


@dataclass
class LLMLatencyResult:
    """``lead``: the question sent → the lead on screen; ``summary_first_token``: → the summary's
    first token; ``full``: → the final, verified answer. ``engines`` counts what answered."""

    model: str
    questions: int
    rounds: int
    lead: Stats
    summary_first_token: Stats
    full: Stats
    engines: dict[str, int] = field(default_factory=dict)


def measure_llm(settings: Settings, questions: list[str], rounds: int = 1) -> LLMLatencyResult | None:
    """Warm LLM-engine latency over ``questions`` (one warm-up answer first), or None when the
    LLM engine cannot run here."""
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
    return LLMLatencyResult(
        assistant.engine.name,
        len(questions),
        rounds,
        Stats.of(leads),
        Stats.of(firsts),
        Stats.of(fulls),
        dict(engines),
    )


def _why(engine: str) -> str:
    """ " (fallback: timeout)" for "extractive (llm fallback: timeout)"; "" for a generated one."""
    return f" ({engine.split('(llm ', 1)[1]}" if "(llm " in engine else ""
