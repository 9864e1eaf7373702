"""The LLM answer engine: the focused quotes at once, a short verified summary above them.

``LLMEngine`` implements the same ``AnswerEngine`` protocol as ``ExtractiveEngine``:

1. **Plan.** The extractive engine ranks and selects the sentences as it always does
   (``ExtractiveEngine.candidates``/``select``); its top quotes (``llm.max_passages``, within
   ``llm.context_tokens``) are composed as the extractive engine composes them, numbered
   ``[1]…[k]``: that is the **lead**, streamed at once (a ``Lead`` piece).
2. **Generate.** The chat model (``backends``) gets a fixed system prompt (a cached prefix) and
   exactly those numbered quotes, and writes 2–4 plain sentences, ``[n]`` after each. Tokens
   stream; a client shows them above the lead.
3. **Verify, in code.** The answer is split into sentences (``parse``); the model's ``[n]`` are
   only a hint. A sentence is kept when one quote (first the ones it cites, then the ones that
   best match it) passes ``SupportJudge`` (``verify``); it then cites that quote. A dropped
   sentence is never silent: each one becomes a ``Reason`` (layer ``llm``, id
   ``llm.dropped.<code>``) and is counted in ``timings["dropped.<code>"]``.
4. **Fall back.** When nothing survives, or the model times out or fails, the extractive
   engine's whole focused answer is the answer: ``fallback_reason`` says why, and ``engine``
   too, e.g. ``"extractive (llm fallback: timeout)"``.
5. **Render.** The kept sentences (≤ 80 words) as one paragraph, ``[n]`` before each full stop,
   then the lead's quotes, each shown once. Such an answer has ``generated=True``.

The guardrails (triage, refusals, the disclaimer) stay in ``Assistant``; the model never
decides them.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ivig_qa.engines.base import Composition, Lead
from ivig_qa.engines.extractive import Candidate, ExtractiveEngine
from ivig_qa.engines.llm.backends import LoadedModel, load_chat_model, message_text
from ivig_qa.engines.llm.parse import Generated, split_generated
from ivig_qa.engines.llm.prompts import STOP, Source, answer_messages
from ivig_qa.engines.llm.verify import Budget, Problem, SupportJudge, word_share
from ivig_qa.settings import Settings
from ivig_qa.text import tokenize
from ivig_qa.types import Citation, Reason

if TYPE_CHECKING:
    from ivig_qa.retrieval import HybridRetriever, Retrieval

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English text, Qwen's tokenizer: close enough for a prompt budget
QUOTES_LABEL = "From the sources, word for word:"
SUMMARY_MAX_WORDS = 80  # the plain-language summary: 2–4 short sentences
# A summary sentence with this share of its quote's content words restates the quote: the quote
# is then not listed again under the summary (its citation stays; the sentence cites it).
RESTATED = 0.8


class LLMTimeout(Exception):
    """Generation took longer than the configured limits."""


@dataclass
class Plan:
    """What the extractive scoring gave one question (scored once per question): the lead (its
    top quotes, composed and numbered), the same quotes as the prompt's sources, and the
    candidates for any fallback."""

    sources: list[Source]
    lead: Composition
    ranked: list[Candidate]
    selected: list[Candidate]


@dataclass(frozen=True)
class Dropped:
    """A generated sentence left out of the answer, and why (``Problem.code`` for counting)."""

    text: str
    why: str
    code: str


class LLMEngine:
    """Writes a short answer from the focused quotes and keeps only its verified sentences."""

    generates = True

    def __init__(
        self,
        retriever: HybridRetriever,
        settings: Settings,
        model: LoadedModel,
        judge: SupportJudge | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.judge = judge or SupportJudge(model, settings)
        self.extractive = ExtractiveEngine(retriever, settings)
        self.name = f"llm:{model.name}"

    @classmethod
    def from_settings(cls, retriever: HybridRetriever, settings: Settings) -> LLMEngine:
        """Load (or reuse) the configured chat model; a clear ``LLMUnavailableError`` otherwise."""
        return cls(retriever, settings, load_chat_model(settings))

    # -- the plan ----------------------------------------------------------------------
    def plan(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Plan:
        """The focused answer's top quotes, within the prompt budget, composed and numbered.

        Offering the model only what the extractive engine would quote first (strong enough,
        de-duplicated, spread over the documents) keeps a small model on topic and its prompt
        short; the same quotes, numbered the same way, are shown under its summary.
        """
        ranked = self.extractive.candidates(question, retrieval)
        selected = self.extractive.select(ranked)
        s = self.settings
        most = s.llm.max_passages if limit is None else min(limit, s.llm.max_passages)
        budget = s.llm.context_tokens * CHARS_PER_TOKEN  # the user turn: titles, quotes, question
        used = len(question) + 40
        picked: list[Candidate] = []
        titles: set[str] = set()
        for cand in selected:
            if len(picked) >= most:
                break
            chunk = cand.passage.chunk
            cost = cand.quote_end - cand.quote_start + 6
            if chunk.title not in titles:
                cost += len(chunk.title) + 10
            if picked and used + cost > budget:
                continue
            picked.append(cand)
            titles.add(chunk.title)
            used += cost
        lead = self.extractive.compose_chosen(picked)
        sources = [Source(c.n, _candidate_of(c, picked), c.start, c.end, c.quote) for c in lead.citations]
        return Plan(sources, lead, ranked, selected)

    # -- generation ----------------------------------------------------------------------
    def _generate(self, messages: list, timings: dict[str, float], since: float) -> Iterator[str]:
        """Stream the model's text; ``LLMTimeout`` past the first-token or total limits.

        The model runs in a worker thread so a stalled model cannot hold the answer past the
        limits; on timeout the worker is told to stop at its next token.
        """
        pieces: queue.Queue = queue.Queue()
        cancel = threading.Event()
        done = object()

        def work() -> None:
            try:
                with self.model.lock:
                    for chunk in self.model.chat.stream(messages, stop=STOP):
                        if cancel.is_set():
                            break
                        pieces.put(message_text(chunk.content))
            except Exception as exc:  # handed to the consumer
                pieces.put(exc)
            finally:
                pieces.put(done)

        started = time.perf_counter()
        worker = threading.Thread(target=work, name="llm-generate", daemon=True)
        worker.start()
        first = True
        count = 0
        try:
            while True:
                elapsed = time.perf_counter() - started
                limit = self.settings.llm.first_token_timeout_s if first else self.settings.llm.timeout_s
                try:
                    item = pieces.get(timeout=max(0.01, limit - elapsed))
                except queue.Empty:
                    raise LLMTimeout() from None
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                if first:  # from the start of composing: source selection + prompt + first token
                    timings["llm_first_token"] = round((time.perf_counter() - since) * 1000, 2)
                    first = False
                count += 1
                if time.perf_counter() - started > self.settings.llm.timeout_s:
                    raise LLMTimeout()
                if item:
                    yield item
        finally:
            cancel.set()
            timings["llm_generate"] = round((time.perf_counter() - started) * 1000, 2)
            timings["llm_chunks"] = float(count)

    # -- verification ----------------------------------------------------------------------
    def verify(
        self, generated: list[Generated], sources: list[Source], budget: Budget | None = None
    ) -> tuple[list[tuple[Generated, list[Source]]], list[Dropped]]:
        """Each sentence kept with the source(s) that support it, or dropped with the reason.

        ``budget`` (shared by the sentences of one answer) limits the judge calls and time.
        """
        budget = budget or Budget(self.settings.llm.judge_max_calls, time.perf_counter() + 3600)
        by_n = {s.n: s for s in sources}
        kept: list[tuple[Generated, list[Source]]] = []
        dropped: list[Dropped] = []
        for sentence in generated:
            if re.search(r"<[A-Za-z/!]", sentence.text):
                dropped.append(Dropped(sentence.text, "contains markup", "markup"))
                continue
            support, why = self._support(sentence, sources, by_n, budget)
            if support:
                kept.append((sentence, support))
            else:
                dropped.append(Dropped(sentence.text, str(why), why.code))
        return kept, dropped

    def _support(
        self, sentence: Generated, sources: list[Source], by_n: dict[int, Source], budget: Budget
    ) -> tuple[list[Source], Problem]:
        """Try the cited sources one by one, then together, then the best-matching others.

        The reason reported for a dropped sentence is its cited source's (the model meant that
        one), or "no_citation" when it cited none that exists.
        """
        statement = sentence.text
        cited = [by_n[n] for n in sentence.cites if n in by_n]
        first_problem: Problem | None = None
        tried: set[int] = set()

        def attempt(group: list[Source]) -> Problem | None:
            return self.judge.check(statement, " ".join(s.text for s in group), budget)

        for src in cited:
            tried.add(src.n)
            problem = attempt([src])
            if problem is None:
                return [src], Problem("", "")
            if first_problem is None:
                first_problem = Problem(f"[{src.n}]: {problem}", problem.code)
        if len(cited) > 1:
            problem = attempt(cited)
            if problem is None:
                return cited, Problem("", "")
        # The model cited nothing or the wrong source: the sources that best match, if any pass.
        others = [s for s in sources if s.n not in tried]
        terms = set(tokenize(statement))
        others.sort(key=lambda s: -len(terms & set(tokenize(s.text))))
        for src in others[:3]:
            problem = attempt([src])
            if problem is None:
                return [src], Problem("", "")
            if first_problem is None and not cited:
                why = f"cites no source; the best match [{src.n}]: {problem}"
                first_problem = Problem(why, "no_citation")
        return [], first_problem or Problem("cites no source and none supports it", "no_citation")

    # -- composing -------------------------------------------------------------------------
    def compose(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Composition:
        result: Composition | None = None
        for item in self.stream_compose(question, retrieval, limit):
            if isinstance(item, Composition):
                result = item
        assert result is not None
        return result

    def stream_compose(
        self, question: str, retrieval: Retrieval, limit: int | None = None, quotes_only: bool = False
    ) -> Iterator[str | Composition]:
        """Yield the lead (a ``Lead``) at once, then the model's text as it is generated, then
        the verified ``Composition``. ``quotes_only`` (urgent care) skips the model."""
        timings: dict[str, float] = {}
        since = time.perf_counter()
        plan = self.plan(question, retrieval, limit)
        sources = plan.sources
        if quotes_only:
            yield self._fallback(plan, limit, "quotes only", timings, skipped=True)
            return
        if not sources or retrieval.best_similarity < self.settings.policy.min_support_score:
            # The guardrails will say "not in the sources"; no need to run the model.
            yield self._fallback(plan, limit, "no relevant sources", timings, skipped=True)
            return
        lead = Lead(f"{QUOTES_LABEL}\n{plan.lead.text}")
        timings["llm_lead"] = _ms(since)
        yield lead
        messages = answer_messages(question, sources)
        text = ""
        try:
            for piece in self._generate(messages, timings, since):
                text += piece
                yield piece
        except LLMTimeout:
            log.warning("LLM timed out; the extractive engine answers")
            yield self._fallback(plan, limit, "timeout", timings)
            return
        except Exception as exc:
            log.warning("LLM failed (%s); the extractive engine answers", exc)
            yield self._fallback(plan, limit, f"error ({type(exc).__name__})", timings)
            return
        started = time.perf_counter()
        budget = Budget(self.settings.llm.judge_max_calls, since + self.settings.llm.timeout_s)
        try:
            kept, dropped = self.verify(split_generated(text), sources, budget)
        except Exception as exc:
            log.warning("LLM verification failed (%s); the extractive engine answers", exc)
            yield self._fallback(plan, limit, f"verification error ({type(exc).__name__})", timings)
            return
        kept, cut = _within_limits(kept, limit)
        dropped += cut
        timings.update(
            llm_verify=_ms(started),
            judge_calls=float(budget.calls),
            decided_by_words=float(budget.decided_by_words),
            kept_sentences=float(len(kept)),
            dropped_sentences=float(len(dropped)),
        )
        for code, count in Counter(d.code for d in dropped).items():
            timings[f"dropped.{code}"] = float(count)
        reasons = [
            Reason(id=f"llm.dropped.{d.code}", layer="llm", detail=f"{d.why}: {d.text}") for d in dropped
        ]
        for d in dropped:
            log.info("dropped unsupported sentence (%s): %r", d.why, d.text)
        if not kept:
            yield self._fallback(plan, limit, "nothing verified", timings, reasons=reasons)
            return
        summary = render_summary(kept)
        restated = restated_quotes(kept)
        timings["restated_quotes"] = float(len(restated))
        quotes = without_quotes(plan.lead.text, restated)
        body = f"{summary}\n\n{QUOTES_LABEL}\n{quotes}" if quotes else summary
        yield Composition(
            body, plan.lead.citations, self.name, generated=True, timings=timings, reasons=reasons
        )

    def _fallback(
        self,
        plan: Plan,
        limit: int | None,
        reason: str,
        timings: dict[str, float],
        skipped: bool = False,
        reasons: list[Reason] | None = None,
    ) -> Composition:
        """The extractive engine's answer, from the candidates the plan already scored.

        ``reason`` becomes ``fallback_reason``; the ``engine`` shown to users says it too, e.g.
        ``"extractive (llm fallback: timeout)"`` or, when the model was not run at all,
        ``"extractive (llm skipped: no relevant sources)"``.
        """
        chosen = plan.selected if limit is None else self.extractive.select(plan.ranked, limit)
        base = self.extractive.compose_chosen(chosen)
        engine = f"extractive (llm {'skipped' if skipped else 'fallback'}: {reason})"
        return Composition(
            base.text, base.citations, engine, fallback_reason=reason, timings=timings, reasons=reasons or []
        )


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _candidate_of(c: Citation, picked: list[Candidate]) -> Candidate:
    """The candidate behind a lead citation (touching quotes merge into one citation)."""
    return next(p for p in picked if p.sentence.doc_id == c.doc_id and c.start <= p.quote_start < c.end)


def _within_limits(
    kept: list[tuple[Generated, list[Source]]], limit: int | None
) -> tuple[list[tuple[Generated, list[Source]]], list[Dropped]]:
    """At most ``limit`` sentences and ``SUMMARY_MAX_WORDS`` words (always the first sentence)."""
    out: list[tuple[Generated, list[Source]]] = []
    cut: list[Dropped] = []
    words = 0
    for sentence, support in kept:
        n = len(sentence.text.split())
        if limit is not None and len(out) >= limit:
            cut.append(Dropped(sentence.text, "over the sentence limit", "limit"))
        elif out and words + n > SUMMARY_MAX_WORDS:
            cut.append(Dropped(sentence.text, f"over the summary's {SUMMARY_MAX_WORDS} words", "words"))
        else:
            out.append((sentence, support))
            words += n
    return out, cut


def restated_quotes(kept: list[tuple[Generated, list[Source]]]) -> set[int]:
    """The quotes a kept sentence restates nearly whole (``RESTATED``): said once, in the summary."""
    return {
        support[0].n
        for sentence, support in kept
        if len(support) == 1 and word_share(support[0].text, sentence.text) >= RESTATED
    }


def without_quotes(lead: str, numbers: set[int]) -> str:
    """The lead's lines less the quotes numbered ``numbers`` (a title left with none goes too)."""
    if not numbers:
        return lead
    lines = [ln for ln in lead.splitlines() if _quote_number(ln) not in numbers]
    out: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("**") and _quote_number(following) is None:
            continue  # a title whose quotes were all restated
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip()


def _quote_number(line: str) -> int | None:
    m = re.match(r"^- .*\[(\d+)\]$", line)
    return int(m.group(1)) if m else None


def render_summary(kept: list[tuple[Generated, list[Source]]]) -> str:
    """The kept sentences as one paragraph, each with the ``[n]`` of the quote(s) behind it
    before its full stop; a sentence said twice is said once."""
    sentences: list[str] = []
    seen: set[str] = set()
    for sentence, support in kept:
        key = " ".join(tokenize(sentence.text))
        if key in seen:
            continue
        seen.add(key)
        body = sentence.text.rstrip()
        body = body[:1].upper() + body[1:]
        mark = f"[{', '.join(str(src.n) for src in support)}]"
        if re.search(r"[.!?][\"”’)]+$", body):  # '… same time.)' keeps its closing, marker after
            sentences.append(f"{body} {mark}")
            continue
        end = body[-1] if body[-1] in ".!?" else "."
        sentences.append(f"{body.rstrip('.!?').rstrip()} {mark}{end}")
    return " ".join(sentences)
