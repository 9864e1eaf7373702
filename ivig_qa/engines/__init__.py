"""Answer engines: the contract (``base``), the default quoting engine, the optional LLM one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ivig_qa.engines.base import AnswerEngine
    from ivig_qa.retrieval import HybridRetriever
    from ivig_qa.settings import Settings


def make_engine(retriever: HybridRetriever, settings: Settings) -> AnswerEngine:
    """The answer engine ``settings.answer.engine`` names (the LLM one is imported only when asked for)."""
    if settings.answer.engine == "llm":
        from ivig_qa.engines.llm import LLMEngine

        return LLMEngine.from_settings(retriever, settings)
    from ivig_qa.engines.extractive import ExtractiveEngine

    return ExtractiveEngine(retriever, settings)
