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

from pydantic import ValidationError

from ivig_qa.conversation import condense
from ivig_qa.engines import make_engine
from ivig_qa.engines.base import AnswerEngine, Composition
from ivig_qa.index import BuildSummary, IndexStore, Manifest, Progress
from ivig_qa.policy.triage import ScopeChecker, has_injection, is_personal, is_urgent, strip_injection
from ivig_qa.policy.wording import (
    DISCLAIMER,
    InvalidQuestion,
    answered_text,
    clean_question,
    not_in_sources_text,
    personal_text,
    plain_text,
    urgent_text,
)
from ivig_qa.retrieval import HybridRetriever, Retrieval, lay_words
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Message, Status

log = logging.getLogger(__name__)

HistoryLike = Sequence[Message | dict]


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


_BODY = "\x00body\x00"  # stands for the sources' part when splitting a fixed answer shape


class Assistant:
    """Answers questions about IVIG from the indexed corpus, with citations."""

    def __init__(self, settings: Settings, store: IndexStore, retriever: HybridRetriever) -> None:
        self.settings = settings
        self.store = store
        self.retriever = retriever
        self.engine: AnswerEngine = make_engine(retriever, settings)
        self.scope = ScopeChecker(retriever.vocabulary)
        self.lay_words = lay_words()

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
        if not store.settings.corpus_dir.is_dir():
            return False  # an app server over a shared index needs no corpus copy
        from ivig_qa.corpus import load_corpus

        return store.stale_reason(load_corpus(store.settings.corpus_dir).documents) is not None

    @property
    def manifest(self) -> Manifest:
        return self.retriever.manifest

    # -- answering -------------------------------------------------------------------------
    def ask(self, question: str, history: HistoryLike | None = None) -> Answer:
        """Answer one user message (with the conversation so far) as an ``Answer``."""
        *_, answer = self._run(question, history, streaming=False)
        assert isinstance(answer, Answer)
        return answer

    def _run(self, question: str, history: HistoryLike | None, streaming: bool) -> Iterator[str | Answer]:
        """The whole flow; yields the engine's text pieces when streaming, then the ``Answer``."""
        timer = _Timer.start()
        try:
            text = clean_question(question, self.settings.max_question_chars)
            turns = self._history(history)
        except InvalidQuestion as exc:
            yield self._answer(Status.INVALID_INPUT, str(exc), question, "", timer)
            return
        t = timer.started
        injection = has_injection(text)
        words = self.retriever.vocabulary.normalise(plain_text(strip_injection(text)))
        standalone = condense(words, turns, self.retriever.term_weight)
        t = timer.lap("condense", t)
        retrieval = self.retriever.retrieve(standalone)
        t = timer.lap("retrieve", t)
        urgent = is_urgent(text)
        personal = not urgent and is_personal(text)
        limit = 3 if urgent else None
        if not streaming:
            found = self.engine.compose(standalone, retrieval, limit=limit)
        else:
            if urgent:  # the urgent-care instructions come first, before any generated text
                yield urgent_text(_BODY).split(_BODY)[0]
            found = None
            for piece in self.engine.stream_compose(standalone, retrieval, limit=limit):
                if isinstance(piece, Composition):
                    found = piece
                else:
                    yield piece
            assert found is not None
        t = timer.lap("compose", t)
        timer.marks.update(found.timings)
        status, body = self._shape(words, found, retrieval.best_similarity, urgent, personal, injection)
        timer.lap("guard", t)
        citations = found.citations if status != Status.NOT_IN_SOURCES or found.text in body else []
        yield self._answer(status, body, text, standalone, timer, citations, engine=found.engine)

    def _shape(
        self, words: str, found: Composition, best: float, urgent: bool, personal: bool, injection: bool
    ) -> tuple[Status, str]:
        """Pick the status and wrap the quotes in that status's fixed wording."""
        if urgent:
            return Status.URGENT_CARE, urgent_text(found.text)
        unknown = self.scope.unknown_subjects(words, self.lay_words)
        relevant = found.citations and best >= self.settings.min_support_score
        # "should I stop my <unlisted drug> before IVIG?" is still a decision for the care team;
        # "which crypto should I buy?" (unknown subject, nothing close) is simply not covered.
        if personal and (relevant or not unknown):
            return Status.PERSONAL_ADVICE, personal_text(words, found.text)
        if unknown or not relevant:
            closest = found.text if best >= self.settings.closest_passage_score else ""
            titles = sorted(self.manifest.titles.values())
            return Status.NOT_IN_SOURCES, not_in_sources_text(unknown, closest, titles, injection)
        return Status.ANSWERED, answered_text(found.text, generated=found.generated)

    def _history(self, history: HistoryLike | None) -> list[Message]:
        """Validated recent turns; a malformed turn is an input error, not a crash.

        Earlier user messages get the same clean-up as the current one (markup, chat
        shorthand, typos), since their words become the follow-up's context.
        """
        turns: list[Message] = []
        for item in list(history or [])[-self.settings.max_history_turns :]:
            try:
                turn = item if isinstance(item, Message) else Message.model_validate(item)
            except ValidationError as exc:
                raise InvalidQuestion(
                    "The conversation history is malformed: each turn needs a role "
                    "('user' or 'assistant') and text content."
                ) from exc
            if turn.role == "user":
                cleaned = self.retriever.vocabulary.normalise(plain_text(turn.content))
                turn = Message(role="user", content=cleaned)
            turns.append(turn)
        return turns

    def stream(self, question: str, history: HistoryLike | None = None) -> Iterator[str | Answer]:
        """Yield the answer text piece by piece, then the final ``Answer``.

        The extractive engine composes in one step, so pieces are its lines; the LLM engine
        yields tokens as they are generated. The last item
        is always the ``Answer``, and it is authoritative: its text is the verified answer,
        which may leave out generated sentences that were streamed before verification.
        """
        yield from self._run(question, history, streaming=True)

    def retrieve(self, question: str) -> Retrieval:
        """Retrieval only (used by the evaluation to score recall@k)."""
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
    ) -> Answer:
        return Answer(
            status=status,
            answer=text,
            citations=citations or [],
            disclaimer=DISCLAIMER,
            question=question if isinstance(question, str) else "",
            standalone_question=standalone,
            engine=engine or self.engine.name,
            timings_ms=timer.total(),
            answer_id=uuid.uuid4().hex,
        )
