"""The optional LLM answer engine (``settings.answer.engine = "llm"``), one job per module.

``backends`` loads the chat models, ``prompts`` holds every prompt text, ``parse`` splits the
generated answer, ``verify`` checks each sentence against its source, ``engine`` runs the whole
answer, ``models`` joins and verifies the packaged GGUF. The names below are imported on first
use, so ``ivig_qa.engines.llm.models`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ivig_qa.engines.llm.backends import LLMUnavailableError, LoadedModel
    from ivig_qa.engines.llm.engine import LLMEngine
    from ivig_qa.engines.llm.verify import LLMSupportChecker, SupportJudge

_HOME = {
    "LLMEngine": "engine",
    "LLMSupportChecker": "verify",
    "SupportJudge": "verify",
    "LLMUnavailableError": "backends",
    "LoadedModel": "backends",
}
__all__ = ["LLMEngine", "LLMSupportChecker", "LLMUnavailableError", "LoadedModel", "SupportJudge"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
