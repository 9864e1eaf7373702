"""The LLM answer engine: plan the sources, generate, verify every sentence, fall back, render.

``LLMEngine`` implements the same ``AnswerEngine`` protocol as ``ExtractiveEngine``:

1. **Plan.** The retrieval's sentences are scored exactly as the extractive engine scores
   them (``ExtractiveEngine.candidates``); the best ones, within ``llm_context_tokens``, are
   numbered and grouped under their document's title (``prompts``).
2. **Generate.** The chat model (``backends``) is asked for a short patient-friendly answer using
   only those sentences, with ``[n]`` after each sentence. Tokens are streamed.
3. **Verify, in code.** The answer is split into sentences (``parse``); the model's ``[n]`` are
   only a hint. A sentence is kept when one numbered source (first the ones it cites, then the
   ones that best match it) passes ``SupportJudge`` (``verify``). Kept sentences cite the source
   that passed (its verbatim sentence(s) are the citation's ``quote``); the others are dropped
   and counted in ``timings["dropped_sentences"]``.
4. **Fall back.** When nothing survives, or the model times out or fails, the extractive engine
   answers: ``fallback_reason`` says why, and ``engine`` too, e.g.
   ``"extractive (llm fallback: timeout)"``.
5. **Render.** The kept sentences as one paragraph, ``[n]`` before each full stop, then the
   supporting quotes verbatim. Such an answer has ``generated=True``.

The guardrails (triage, refusals, the disclaimer) stay in ``Assistant``; the model never
decides them.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ivig_qa.engines.base import Composition
from ivig_qa.engines.extractive import Candidate, ExtractiveEngine, citation
from ivig_qa.engines.llm.backends import LoadedModel, load_chat_model, message_text
from ivig_qa.engines.llm.parse import Generated, split_generated
from ivig_qa.engines.llm.prompts import STOP, SYSTEM_PROMPT, Source, answer_messages
from ivig_qa.engines.llm.verify import Budget, SupportJudge
from ivig_qa.settings import Settings
from ivig_qa.text import collapse_space, tokenize
from ivig_qa.types import Citation

if TYPE_CHECKING:
    from ivig_qa.retrieval import HybridRetriever, Retrieval

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English text, Qwen's tokenizer: close enough for a prompt budget
SUPPORTING_QUOTES_LEAD = "More from the sources, word for word:"


class LLMTimeout(Exception):
    """Generation took longer than the configured limits."""


@dataclass
class Plan:
    """What the extractive scoring gave one question: the prompt's sources and, for the
    supporting quotes and any fallback, the scored candidates (scored once per question)."""

    sources: list[Source]
    ranked: list[Candidate]
    selected: list[Candidate]


class LLMEngine:
    """Generates a short answer from numbered source sentences and keeps only verified sentences."""

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
    def plan(self, question: str, retrieval: Retrieval) -> Plan:
        """The sentences the extractive engine would quote, within the prompt budget, numbered.

        Offering the model only the extractive selection (strong enough, de-duplicated, spread
        over the documents) keeps a small model on topic. Also returns the candidates (for the
        supporting quotes and the fallback).
        """
        ranked = self.extractive.candidates(question, retrieval)
        selected = self.extractive.select(ranked)
        s = self.settings
        budget = s.llm.context_tokens * CHARS_PER_TOKEN  # the whole prompt, titles included
        picked: list[tuple[Candidate, int, int, str]] = []
        used = len(SYSTEM_PROMPT) + len(question) + 40
        docs: set[str] = set()
        for cand in selected:
            if len(picked) >= s.llm.max_passages:
                break
            chunk = cand.passage.chunk
            start, end = cand.quote_start, cand.quote_end
            if any(
                c.sentence.doc_id == cand.sentence.doc_id and st < end and start < en
                for c, st, en, _ in picked
            ):
                continue
            text = chunk.text[start - chunk.start : end - chunk.start]
            cost = len(collapse_space(text)) + 6
            if cand.sentence.doc_id not in docs:
                cost += len(chunk.title) + 10
            if picked and used + cost > budget:
                continue
            picked.append((cand, start, end, text))
            docs.add(cand.sentence.doc_id)
            used += cost
        # Group by document (best document first), best sentence first within each.
        doc_order = list(dict.fromkeys(c.sentence.doc_id for c, *_ in picked))
        ordered = sorted(picked, key=lambda p: doc_order.index(p[0].sentence.doc_id))
        numbered = [Source(i, c, st, en, text) for i, (c, st, en, text) in enumerate(ordered, start=1)]
        return Plan(numbered, ranked, selected)

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
    ) -> tuple[list[tuple[Generated, list[Source]]], list[tuple[str, str]]]:
        """Each sentence kept with the source(s) that support it, or dropped with the reason.

        ``budget`` (shared by the sentences of one answer) limits the judge calls and time.
        """
        budget = budget or Budget(self.settings.llm.judge_max_calls, time.perf_counter() + 3600)
        by_n = {s.n: s for s in sources}
        kept: list[tuple[Generated, list[Source]]] = []
        dropped: list[tuple[str, str]] = []
        for sentence in generated:
            if re.search(r"<[A-Za-z/!]", sentence.text):
                dropped.append((sentence.text, "contains markup"))
                continue
            support, why = self._support(sentence, sources, by_n, budget)
            if support:
                kept.append((sentence, support))
            else:
                dropped.append((sentence.text, why))
        return kept, dropped

    def _support(
        self, sentence: Generated, sources: list[Source], by_n: dict[int, Source], budget: Budget
    ) -> tuple[list[Source], str]:
        """Try the cited sources one by one, then together, then the best-matching others."""
        statement = sentence.text
        cited = [by_n[n] for n in sentence.cites if n in by_n]
        first_problem = "cites no source" if not cited else ""
        tried: set[int] = set()

        def attempt(group: list[Source]) -> str | None:
            return self.judge.check(statement, " ".join(s.text for s in group), budget)

        for src in cited:
            tried.add(src.n)
            problem = attempt([src])
            if problem is None:
                return [src], ""
            first_problem = first_problem or f"[{src.n}]: {problem}"
        if len(cited) > 1:
            problem = attempt(cited)
            if problem is None:
                return cited, ""
        # The model cited nothing or the wrong source: the sources that best match, if any pass.
        others = [s for s in sources if s.n not in tried]
        terms = set(tokenize(statement))
        others.sort(key=lambda s: -len(terms & set(tokenize(s.text))))
        for src in others[:3]:
            if attempt([src]) is None:
                return [src], ""
        return [], first_problem or "no source supports it"

    # -- composing -------------------------------------------------------------------------
    def compose(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Composition:
        result: Composition | None = None
        for item in self.stream_compose(question, retrieval, limit):
            if isinstance(item, Composition):
                result = item
        assert result is not None
        return result

    def stream_compose(
        self, question: str, retrieval: Retrieval, limit: int | None = None
    ) -> Iterator[str | Composition]:
        """Yield the model's text as it is generated, then the verified ``Composition``."""
        timings: dict[str, float] = {}
        since = time.perf_counter()
        plan = self.plan(question, retrieval)
        sources = plan.sources
        if not sources or retrieval.best_similarity < self.settings.policy.min_support_score:
            # The guardrails will say "not in the sources"; no need to run the model.
            yield self._fallback(plan, limit, "no relevant sources", timings, skipped=True)
            return
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
        if limit is not None:
            dropped += [(g.text, "over the sentence limit") for g, _ in kept[limit:]]
            kept = kept[:limit]
        timings.update(
            llm_verify=round((time.perf_counter() - started) * 1000, 2),
            judge_calls=float(budget.calls),
            kept_sentences=float(len(kept)),
            dropped_sentences=float(len(dropped)),
        )
        for sentence, why in dropped:
            log.info("dropped unsupported sentence (%s): %r", why, sentence)
        if not kept:
            yield self._fallback(plan, limit, "nothing verified", timings)
            return
        quotes = self._supporting_quotes(kept, plan.selected, limit)
        timings["supporting_quotes"] = float(len(quotes))
        body, citations = render(kept, quotes)
        yield Composition(body, citations, self.name, generated=True, timings=timings)

    def _supporting_quotes(
        self, kept: list[tuple[Generated, list[Source]]], selected: list[Candidate], limit: int | None
    ) -> list[Candidate]:
        """The extractive selection's sentences that no kept sentence cites (shown verbatim)."""
        n = (
            self.settings.llm.supporting_quotes
            if limit is None
            else min(limit, self.settings.llm.supporting_quotes)
        )
        cited = [(src.candidate.sentence.doc_id, src.start, src.end) for _, group in kept for src in group]
        out: list[Candidate] = []
        for cand in selected:
            doc, start, end = cand.sentence.doc_id, cand.quote_start, cand.quote_end
            if any(d == doc and s < end and start < e for d, s, e in cited):
                continue
            if len(out) >= n:
                break
            out.append(cand)
            cited.append((doc, start, end))
        return out

    def _fallback(
        self, plan: Plan, limit: int | None, reason: str, timings: dict[str, float], skipped: bool = False
    ) -> Composition:
        """The extractive engine's answer, from the candidates the plan already scored.

        ``reason`` becomes ``fallback_reason``; the ``engine`` shown to users says it too, e.g.
        ``"extractive (llm fallback: timeout)"`` or, when the model was not run at all,
        ``"extractive (llm skipped: no relevant sources)"``.
        """
        chosen = plan.selected if limit is None else self.extractive.select(plan.ranked, limit)
        base = self.extractive.compose_chosen(chosen)
        engine = f"extractive (llm {'skipped' if skipped else 'fallback'}: {reason})"
        return Composition(base.text, base.citations, engine, fallback_reason=reason, timings=timings)


def render(
    kept: list[tuple[Generated, list[Source]]], quotes: list[Candidate] | None = None
) -> tuple[str, list[Citation]]:
    """The generated sentences as one paragraph (``[n]`` before each full stop, citations
    numbered by first use), then the supporting quotes as a list, verbatim."""
    numbers_by_source: dict[int, int] = {}
    citations: list[Citation] = []
    sentences: list[str] = []
    seen: set[str] = set()
    for sentence, support in kept:
        key = " ".join(tokenize(sentence.text))
        if key in seen:
            continue
        seen.add(key)
        marks = []
        for src in support:
            if src.n not in numbers_by_source:
                numbers_by_source[src.n] = len(citations) + 1
                citations.append(citation(len(citations) + 1, src.start, src.end, src.candidate))
            marks.append(numbers_by_source[src.n])
        body = sentence.text.rstrip()
        body = body[:1].upper() + body[1:]
        mark = f"[{', '.join(map(str, marks))}]"
        if re.search(r"[.!?][\"”’)]+$", body):  # '… same time.)' keeps its closing, marker after
            sentences.append(f"{body} {mark}")
            continue
        end = body[-1] if body[-1] in ".!?" else "."
        sentences.append(f"{body.rstrip('.!?').rstrip()} {mark}{end}")
    text = " ".join(sentences)
    if quotes:
        lines = [SUPPORTING_QUOTES_LEAD]
        for cand in quotes:
            citations.append(citation(len(citations) + 1, cand.quote_start, cand.quote_end, cand))
            lines.append(f"- {collapse_space(citations[-1].quote)} [{len(citations)}]")
        text = f"{text}\n\n" + "\n".join(lines)
    return text, citations
