"""The LLM's second opinion on urgency: asked when triage finds no red flag in a message that
tells of something happening now.

It can make an answer urgent, never less urgent (no veto). Only a message that reads as now (or
may) and either names a symptom or tells something (a clause that is not a question) is
asked: a plain question about IVIG costs nothing. A model that is missing, stays busy past
``policy.second_opinion_wait_s`` or fails leaves triage as it is, and the reasons say so.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ivig_qa.engines.llm.prompts import triage_messages
from ivig_qa.policy.reading import NOW, UNSURE
from ivig_qa.policy.scope import asks
from ivig_qa.policy.triage import Triage
from ivig_qa.settings import Settings
from ivig_qa.types import Reason

if TYPE_CHECKING:
    from ivig_qa.engines.llm.backends import LoadedModel

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000
"""The most of a message the model reads (its end, where the question is): a bounded cost."""

_CLAUSES = re.compile(r"(?<=[.!?])\s+|,\s+|\n+")


def tells(message: str) -> bool:
    """Some sentence or clause of ``message`` states something rather than asks."""
    return any(not asks(part) for part in _CLAUSES.split(message.strip()) if part.strip())


def wanted(message: str, triage: Triage) -> bool:
    """Worth a second opinion: not urgent, read as now (or unsure), and a symptom or a statement."""
    if triage.is_urgent or triage.reading not in (NOW, UNSURE):
        return False
    return bool(triage.mild or triage.set_aside) or tells(message)


class SecondOpinion:
    """Asks the chat model ``TRIAGE_SYSTEM``'s question; "URGENT" makes the triage urgent."""

    def __init__(self, model: LoadedModel, wait_s: float) -> None:
        self.model = model
        self.wait_s = wait_s
        self.reply_tokens, self.urgent_start = reply_budget(model)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecondOpinion | None:
        """The configured second opinion, or None (``off``; ``auto`` with the extractive engine).

        ``llm`` without the extra raises ``LLMUnavailableError``, as ``engine = "llm"`` does.
        """
        mode = settings.policy.second_opinion
        if mode == "off" or (mode == "auto" and settings.answer.engine != "llm"):
            return None
        from ivig_qa.engines.llm.backends import load_chat_model

        second = cls(load_chat_model(settings, role="triage"), settings.policy.second_opinion_wait_s)
        if settings.llm.backend == "llamacpp":  # a remote server keeps its own prompt cache
            second.prime()
        return second

    def prime(self) -> None:
        """Evaluate the prompt once at start-up (~2.5 s on 2 cores), so the first asked message
        costs what every later one does (~0.4 s): only its own words are new to the model."""
        try:
            self._ask("hello")
        except Exception as exc:  # a model that fails now is reported when a message is asked
            log.warning("second opinion could not be primed (%s)", type(exc).__name__)

    def review(self, message: str, triage: Triage) -> Triage:
        """``triage``, made urgent when the model says so; unchanged (and saying why) otherwise."""
        if not wanted(message, triage):
            return triage
        started = time.perf_counter()
        try:
            verdict = self._ask(message[-MAX_MESSAGE_CHARS:])
        except Exception as exc:  # the safety net must never break an answer
            log.warning("second opinion failed (%s); triage stands alone", type(exc).__name__)
            verdict = None
        took = round((time.perf_counter() - started) * 1000, 1)
        if verdict is None:
            reason = Reason(id="second_opinion.unavailable", layer="llm", detail=f"{took} ms")
            return replace(triage, reviewed=(reason,))
        detail = f"{self.model.name}, {took} ms"
        if not verdict:
            said = Reason(id="second_opinion.not_urgent", layer="llm", detail=detail)
            return replace(triage, reviewed=(said,))
        urgent = Reason(id="urgent.second_opinion", layer="llm", detail=detail)
        now = Reason(id="triage.now", layer="llm", detail="the second opinion")
        return replace(triage, urgent=(urgent,), mild=(), reading=NOW, reading_reason=now)

    def _ask(self, message: str) -> bool | None:
        """True: urgent; False: not; None: the model stayed busy past the wait."""
        from ivig_qa.engines.llm.backends import message_text

        lock = self.model.lock
        acquire = getattr(lock, "acquire", None)  # a remote server's lock never blocks
        if acquire is not None and not acquire(timeout=self.wait_s):
            return None

        def reply(tokens: int) -> str:
            said = self.model.chat.invoke(triage_messages(message), max_tokens=tokens, temperature=0.0)
            return message_text(said.content).strip().lstrip("\"'*").upper()

        try:
            said = reply(self.reply_tokens)
            if self.reply_tokens < 3 and not said.startswith((self.urgent_start, "OK")):
                said = reply(3)  # a first token that is neither ("**", a space): read on
        finally:
            if acquire is not None:
                lock.release()
        return said.startswith(self.urgent_start) or said.startswith("UR")


def reply_budget(model: LoadedModel) -> tuple[int, str]:
    """How many tokens the model may write, and what an urgent reply starts with.

    A local model whose tokenizer starts "URGENT" and "OK" with different tokens needs one: the
    verdict is in the first token, and each further one costs a decoding step (~70 ms on 2
    cores); a first token that is neither ("**") is read on to three (``_ask``). Otherwise (a
    remote server, whose tokenizer is not known here) three, and "UR".
    """
    client = getattr(model.chat, "client", None)  # llama.cpp's Llama, with its tokenizer
    if hasattr(client, "tokenize"):
        try:
            first = client.detokenize(client.tokenize(b"URGENT", add_bos=False, special=False)[:1])
            start = first.decode("utf-8", "replace").strip().upper()
        except Exception:  # any odd tokenizer: the safe default
            start = ""
        if start and "URGENT".startswith(start) and not "OK".startswith(start):
            return 1, start
    return 3, "UR"
