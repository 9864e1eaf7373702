"""The contract every answer engine meets: compose (and stream) cited text from a retrieval."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ivig_qa.types import Citation, Reason

if TYPE_CHECKING:
    from ivig_qa.retrieval import Retrieval


class Lead(str):
    """A streamed piece that is the answer's lead, shown at once (the LLM engine's quotes).

    Pieces streamed after a ``Lead`` (the summary being generated) are shown above it; the final
    answer reads ``summary + "\n\n" + lead``. Engines that stream in reading order send none.
    """


@dataclass
class Composition:
    """What an engine returns: markdown with ``[n]`` markers and the citations behind them.

    ``generated`` says the text was written by a model (and verified) rather than quoted;
    ``fallback_reason`` says why a generating engine answered with quotes instead;
    ``timings`` are the engine's own stage timings (ms), merged into ``Answer.timings_ms``;
    ``reasons`` say what the engine left out and why (e.g. a generated sentence it dropped).
    """

    text: str
    citations: list[Citation]
    engine: str
    generated: bool = False
    fallback_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reasons: list[Reason] = field(default_factory=list)


class AnswerEngine(Protocol):
    """An engine composes the answer body; policy, wording and the disclaimer stay outside it."""

    name: str
    generates: bool
    """True when the engine writes text (which is then verified) rather than quoting."""

    def compose(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Composition: ...

    def stream_compose(
        self, question: str, retrieval: Retrieval, limit: int | None = None, quotes_only: bool = False
    ) -> Iterator[str | Composition]:
        """Yield text pieces as they are ready, then the final ``Composition`` last.

        ``quotes_only``: the focused quotes and nothing a model writes (urgent care: the
        instructions and a few quotes go out at once, nobody waits for a summary).
        """
        ...
