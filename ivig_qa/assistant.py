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

from ivig_qa.answer import AnswerEngine, ExtractiveEngine
from ivig_qa.guardrails import DISCLAIMER, InvalidQuestion, clean_question
from ivig_qa.index import BuildSummary, IndexStore, Manifest, Progress
from ivig_qa.retrieval import HybridRetriever, Retrieval
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Message, Status

log = logging.getLogger(__name__)

NOT_IN_SOURCES_TEXT = (
    "I could not find this in the sources I answer from, so I can't answer it reliably. "
    "Please ask your doctor or care team."
)

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


class Assistant:
    """Answers questions about IVIG from the indexed corpus, with citations."""

    def __init__(self, settings: Settings, store: IndexStore, retriever: HybridRetriever) -> None:
        self.settings = settings
        self.store = store
        self.retriever = retriever
        self.engine: AnswerEngine = ExtractiveEngine(retriever, settings)

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
        timer = _Timer.start()
        try:
            text = clean_question(question, self.settings.max_question_chars)
        except InvalidQuestion as exc:
            return self._answer(Status.INVALID_INPUT, str(exc), question, "", timer)
        t = timer.started
        standalone = text
        t = timer.lap("condense", t)
        retrieval = self.retriever.retrieve(standalone)
        t = timer.lap("retrieve", t)
        composition = self.engine.compose(standalone, retrieval)
        timer.lap("compose", t)
        if not composition.citations:
            return self._answer(Status.NOT_IN_SOURCES, NOT_IN_SOURCES_TEXT, text, standalone, timer)
        return self._answer(
            Status.ANSWERED, composition.text, text, standalone, timer, composition.citations
        )

    def stream(self, question: str, history: HistoryLike | None = None) -> Iterator[str | Answer]:
        """Yield the answer text piece by piece, then the final ``Answer``.

        The extractive engine composes in one step, so pieces are its lines; an LLM engine
        yields tokens as they are generated. The last item is always the ``Answer``.
        """
        answer = self.ask(question, history)
        for line in answer.answer.splitlines(keepends=True):
            yield line
        yield answer

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
    ) -> Answer:
        return Answer(
            status=status,
            answer=text,
            citations=citations or [],
            disclaimer=DISCLAIMER,
            question=question if isinstance(question, str) else "",
            standalone_question=standalone,
            engine=self.engine.name,
            timings_ms=timer.total(),
            answer_id=uuid.uuid4().hex,
        )
