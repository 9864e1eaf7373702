"""The assistant: one object that runs the whole flow for every entry point.

guard input → triage → condense follow-ups → retrieve → compose → disclaimer.
The CLI, the HTTP API, the Gradio chat and the evaluation all call ``Assistant.ask`` so
they answer identically.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivig_qa.conversation import condense
from ivig_qa.engines import make_engine
from ivig_qa.engines.base import AnswerEngine, Composition, Lead
from ivig_qa.index import BuildSummary, IndexStore, Manifest, Progress
from ivig_qa.policy import (
    DISCLAIMER,
    InputLimits,
    InvalidQuestion,
    Thresholds,
    check_history,
    clean_question,
    decide,
    frame,
)
from ivig_qa.policy.decide import Findings
from ivig_qa.policy.language import is_english, other_language
from ivig_qa.policy.language import preload as preload_language_identifier
from ivig_qa.policy.normalise import correct_spelling, normalise
from ivig_qa.policy.red_flags import Catalogue
from ivig_qa.policy.scope import ScopeChecker
from ivig_qa.policy.second_opinion import SecondOpinion
from ivig_qa.policy.semantic import SemanticLayer, same_text
from ivig_qa.policy.triage import Rules, Triager, has_injection, strip_injection
from ivig_qa.retrieval import HybridRetriever, Retrieval, lay_words
from ivig_qa.settings import Settings
from ivig_qa.text import STOPWORDS, WORD, fold, strip_markup
from ivig_qa.types import Answer, Decision, Message, Reason, Status

if TYPE_CHECKING:
    from ivig_qa.chain import AssistantRunnable

log = logging.getLogger(__name__)

HistoryLike = Sequence[Message | dict]


def _direct(name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Runs one named stage of the flow as is (the Runnable passes one that traces it)."""
    return fn(*args, **kwargs)


@dataclass
class _Timer:
    """Collects per-stage milliseconds for ``Answer.timings_ms``."""

    started: float
    marks: dict[str, float]

    @classmethod
    def start(cls) -> _Timer:
        return cls(time.perf_counter(), {})

    def lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.marks[stage] = round((now - since) * 1000, 2)
        return now

    def total(self) -> dict[str, float]:
        return {**self.marks, "total": round((time.perf_counter() - self.started) * 1000, 2)}


class Assistant:
    """Answers questions about IVIG from the indexed corpus, with citations."""

    def __init__(self, settings: Settings, store: IndexStore, retriever: HybridRetriever) -> None:
        self.settings = settings
        self.store = store
        self.retriever = retriever
        self.engine: AnswerEngine = make_engine(retriever, settings)
        catalogue = Catalogue.load()
        encode = store.embeddings.questions.embed_documents
        # The catalogue's vectors are embedded once (kept beside the ONNX export, keyed by the
        # model and the texts); a message's clauses are embedded in one batch call.
        cache = settings.index.encoder_cache_dir
        key = f"{retriever.manifest.embedding_model}:{settings.index.query_encoder}"
        self.scope = ScopeChecker(retriever.vocabulary, lay_words(), encode, catalogue.words, cache, key)
        self.triager = Triager(catalogue, SemanticLayer(catalogue, encode, cache, key))
        self.second_opinion = SecondOpinion.from_settings(settings)
        preload_language_identifier()
        self.known_words = retriever.vocabulary.words | lay_words() | Rules.load().chat_words | STOPWORDS
        self.preferred_words = catalogue.spelling_words | retriever.vocabulary.words
        self.limits = InputLimits(
            settings.policy.max_question_chars,
            settings.policy.max_history_turns,
            settings.policy.max_history_message_chars,
        )
        self.thresholds = Thresholds(settings.policy.min_support_score, settings.policy.closest_passage_score)

    @classmethod
    def load(
        cls,
        settings: Settings | None = None,
        *,
        build: bool = True,
        progress: Progress | None = None,
        on_build: Callable[[BuildSummary], None] | None = None,
    ) -> Assistant:
        """Open the index, building or refreshing it from the corpus first when needed."""
        settings = settings or Settings()
        store = IndexStore(settings)
        manifest = store.manifest()
        if build and (manifest is None or cls._corpus_changed(store)):
            summary = store.build(progress=progress)
            if on_build:
                on_build(summary)
            manifest = store.manifest()
        if manifest is None:
            from ivig_qa.index import IndexUnavailableError

            raise IndexUnavailableError("no index has been built yet; run `ivig-qa index`")
        return cls(settings, store, HybridRetriever.open(store, manifest))

    @staticmethod
    def _corpus_changed(store: IndexStore) -> bool:
        """True when the corpus folder exists and differs from the active index."""
        if not store.settings.index.corpus_dir.is_dir():
            return False  # an app server over a shared index needs no corpus copy
        from ivig_qa.corpus import load_corpus

        return store.stale_reason(load_corpus(store.settings.index.corpus_dir).documents) is not None

    @property
    def manifest(self) -> Manifest:
        return self.retriever.manifest

    # -- answering -------------------------------------------------------------------------
    def ask(self, question: str, history: HistoryLike | None = None) -> Answer:
        """Answer one user message (with the conversation so far) as an ``Answer``."""
        *_, answer = self._run(question, history)
        assert isinstance(answer, Answer)
        return answer

    def as_runnable(self) -> AssistantRunnable:
        """This assistant as a LangChain Runnable: ``{"question", "history"}`` → ``Answer``."""
        from ivig_qa.chain import AssistantRunnable

        return AssistantRunnable(self)

    def _run(
        self, question: str, history: HistoryLike | None, stage: Callable[..., Any] = _direct
    ) -> Iterator[str | Answer]:
        """The whole flow: yields the answer text piece by piece, then the ``Answer``.

        ``stage(name, fn, *args)`` runs each named stage (condense, retrieve, policy, compose).
        """
        timer = _Timer.start()
        try:
            text = clean_question(question, self.limits.max_question_chars)
            turns = self._history(history)
        except InvalidQuestion as exc:
            reason = Reason(id="input.invalid", layer="input", detail=exc.field)
            yield self._answer(Status.INVALID_INPUT, str(exc), question, "", timer, reasons=[reason])
            return
        t = timer.started
        clean = normalise(text)
        plain = strip_markup(strip_injection(clean))
        language = other_language(plain, self.known_words)
        asked = language.english_part if language and language.english_part else plain
        words = self.retriever.vocabulary.normalise(
            correct_spelling(asked, self.known_words, self.preferred_words, english_fallback=False)
        )
        t = timer.lap("normalise", t)
        standalone = stage("condense", condense, words, turns, self.retriever.term_weight)
        t = timer.lap("condense", t)
        retrieval = stage("retrieve", self.retriever.retrieve, standalone)
        t = timer.lap("retrieve", t)
        decision = stage("policy", self._decide, clean, plain, words, standalone, retrieval, language)
        t = timer.lap("policy", t)
        found: Composition | None = None
        pieces: Iterator[str | Composition] = iter(())
        quoted = self._shows_quotes(decision, retrieval)
        if quoted:
            # Urgent care: the instructions and a few quotes at once, no waiting for a summary.
            urgent = decision.status == Status.URGENT_CARE
            pieces = stage(
                "compose",
                self.engine.stream_compose,
                standalone,
                retrieval,
                limit=3 if urgent else None,
                quotes_only=urgent,
            )
        titles = sorted(self.manifest.titles.values())
        # The head goes out before the engine composes anything (the urgent-care instructions
        # first of all); the final Answer's wording follows what the engine actually did.
        shape = frame(decision, words, titles, generated=self.engine.generates, quoted=quoted)
        yield shape.head
        started_body = led = False
        for piece in pieces:
            if isinstance(piece, Composition):
                found = piece
                continue
            if not started_body:
                yield shape.body_lead
                started_body = True
            led = led or isinstance(piece, Lead)
            yield piece
        body = found.text if found else ""
        t = timer.lap("compose", t)
        if found:
            timer.marks.update(found.timings)
        shape = frame(decision, words, titles, generated=bool(found and found.generated), quoted=quoted)
        if shape.tail and not led:  # after a Lead, streamed text goes above it: the Answer has the tail
            yield shape.tail
        timer.lap("guard", t)
        yield self._answer(
            decision.status,
            shape.wrap(body),
            text,
            standalone,
            timer,
            found.citations if found else [],
            engine=found.engine if found else None,
            reasons=[*decision.reasons, *(found.reasons if found else [])],
        )

    def _decide(
        self, clean: str, plain: str, words: str, standalone: str, retrieval: Retrieval, language: object
    ) -> Decision:
        """The policy stage: what the message is (``_findings``), then the decision table."""
        return decide(self._findings(clean, plain, words, standalone, retrieval, language), self.thresholds)

    def _findings(
        self, clean: str, plain: str, words: str, standalone: str, retrieval: Retrieval, language: object
    ) -> Findings:
        """Triage (both layers) and scope of the message, for ``decide``."""
        triage_text = correct_spelling(plain, self.known_words, self.preferred_words, english_fallback=False)
        known = {}
        semantic = self.triager.semantic
        query = retrieval.expanded_query.lower()
        if (
            semantic is not None
            and standalone == words
            and same_text(semantic.core(query)) == same_text(query)
        ):
            known[query] = retrieval.query_vector  # the retrieval embedded this very text: reuse it
        triage = self.triager.assess(triage_text, known, self._unreadable, self._nonword)
        if self.second_opinion is not None:
            triage = self.second_opinion.review(triage_text, triage)
        return Findings(
            message=triage_text,
            triage=triage,
            coverage=self.scope.coverage(words),
            best_similarity=retrieval.best_similarity,
            injection=has_injection(clean),
            language=language,  # type: ignore[arg-type]
            treatment=self.scope.names_treatment(words),
        )

    def _unreadable(self, clause: str) -> bool:
        """A word of ``clause`` that neither the sources nor everyday English have."""
        return bool(self.scope.unknown_subjects(clause, whole=False))

    def _nonword(self, clause: str) -> bool:
        """A word of ``clause`` that neither the sources nor any English word list has ("pipi")."""
        return any(w.isalpha() and not is_english(w, self.known_words) for w in WORD.findall(fold(clause)))

    def _shows_quotes(self, decision: Decision, retrieval: Retrieval) -> bool:
        """Quotes back every answer but an out-of-scope one, or a symptom (mild or urgent) the
        sources are not close to, with nothing close enough to show (and a reply to a message
        in another language, which retrieval cannot read). An emergency the sources say nothing
        about gets its instructions alone, not "for reference" quotes about something else."""
        symptom = decision.symptom == "mild" or decision.status == Status.URGENT_CARE
        distant = symptom and retrieval.best_similarity < self.thresholds.min_support_score
        if decision.status != Status.NOT_IN_SOURCES and not distant:
            return True
        if decision.language:
            return False
        return retrieval.best_similarity >= self.thresholds.closest_passage_score

    def _history(self, history: HistoryLike | None) -> list[Message]:
        """Validated turns (``InvalidQuestion`` past a limit); user turns cleaned up.

        Earlier user messages get the same clean-up as the current one (markup, chat
        shorthand, typos), since their words become the follow-up's context.
        """
        return [
            Message(role="user", content=self.retriever.vocabulary.normalise(strip_markup(t.content)))
            if t.role == "user"
            else t
            for t in check_history(history, self.limits)
        ]

    def stream(self, question: str, history: HistoryLike | None = None) -> Iterator[str | Answer]:
        """Yield the answer text piece by piece, then the final ``Answer``.

        The fixed wording comes first (the urgent-care instructions before anything else),
        then the engine's pieces: the extractive engine's lines; or the LLM engine's ``Lead``
        (its quotes, at once) and then its summary's tokens, which a client shows above the lead.
        The last item is always the ``Answer``, and it is authoritative: its text is the
        verified answer, which may leave out generated sentences streamed before verification.
        """
        yield from self._run(question, history)

    def retrieve(self, question: str) -> Retrieval:
        """Retrieval only, with what composing reuses (LangChain callers: ``retriever.invoke``)."""
        return self.retriever.retrieve(question)

    def _answer(
        self,
        status: Status,
        text: str,
        question: str,
        standalone: str,
        timer: _Timer,
        citations: list | None = None,
        engine: str | None = None,
        reasons: list[Reason] | None = None,
    ) -> Answer:
        return Answer(
            status=status,
            answer=text,
            citations=citations or [],
            disclaimer=DISCLAIMER,
            question=question if isinstance(question, str) else "",
            standalone_question=standalone,
            engine=engine or self.engine.name,
            reasons=reasons or [],
            timings_ms=timer.total(),
            answer_id=uuid.uuid4().hex,
        )
