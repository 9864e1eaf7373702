"""Loading and unloading the LangChain chat models the LLM engine and its judge talk to.

Two backends: a local GGUF through llama.cpp (langchain-community's ``ChatLlamaCpp``) and any
OpenAI-compatible server (``ChatOpenAI``). A model is loaded once per process and shared.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivig_qa.embeddings import ModelNotFoundError
from ivig_qa.engines.llm import models
from ivig_qa.settings import Settings

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


class LLMUnavailableError(ModelNotFoundError):
    """The LLM engine was asked for but cannot run here; the message says what to install."""


@dataclass
class LoadedModel:
    """A chat model plus the lock that serialises calls into an in-process llama.cpp model."""

    chat: BaseChatModel
    name: str
    lock: Any = field(default_factory=threading.Lock)


_LOADED: dict[tuple, LoadedModel] = {}
_LOADING = threading.Lock()

# What each backend imports; all of it comes with the `llm` extra.
_NEEDS = {"llamacpp": ["llama_cpp", "langchain_community"], "openai": ["langchain_openai"]}


@atexit.register
def unload_chat_models() -> None:
    """Free in-process llama.cpp models while the interpreter still works.

    Left to the garbage collector at exit, ``Llama.__del__`` runs after the modules it needs
    are torn down and prints a ``TypeError`` traceback on every exit.
    """
    with _LOADING:
        for loaded in _LOADED.values():
            client = getattr(loaded.chat, "client", None)
            close = getattr(client, "close", None)
            if callable(close):
                close()
        _LOADED.clear()


def require_extra(backend: str) -> None:
    """Raise ``LLMUnavailableError`` (not an ImportError traceback) when the extra is missing."""
    missing = [m for m in _NEEDS[backend] if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMUnavailableError(
            f"the LLM engine ({backend}) needs {', '.join(missing)}, which is not installed. "
            f"Install the optional extra with `{models.INSTALL_HINT}` (llama-cpp-python compiles from "
            "source; see the README), or set engine = 'extractive'."
        )


def _model_key(settings: Settings) -> tuple:
    return (
        settings.llm.backend,
        str(settings.llm.model_path or settings.llm.model_dir),
        settings.llm.model,
        settings.llm.model_name,
        settings.llm.openai_api_key.get_secret_value() if settings.llm.openai_api_key else None,
        settings.llm.timeout_s,
        tuple(sorted(settings.llm.server_params.items())),
        settings.llm.base_url,
        settings.llm.n_ctx,
        settings.llm.n_threads,
        settings.llm.temperature,
        settings.llm.max_tokens,
    )


TRIAGE_CONTEXT_TOKENS, TRIAGE_BATCH_TOKENS = 1024, 128
"""The triage context: its prompt (~250 tokens) and a message of up to 2,000 characters, read in
small batches (a message is a few dozen tokens; llama.cpp's buffers scale with the batch)."""


def load_chat_model(settings: Settings, role: str = "answer") -> LoadedModel:
    """The configured chat model (cached: the engine and the eval judge share one copy).

    ``role = "triage"`` (the second opinion) gets a llama.cpp context of its own over the same
    weights (memory-mapped, so shared): each context keeps its own prompt evaluated, where one
    shared context would re-read the other's system prompt on every switch (~2.5 s each way on 2
    cores), and a triage call need not wait for an answer being generated. A remote server is
    shared as it is.
    """
    require_extra(settings.llm.backend)
    own = role if settings.llm.backend == "llamacpp" else "answer"
    key = (*_model_key(settings), own)
    with _LOADING:
        if key not in _LOADED:
            if settings.llm.backend == "openai":
                _LOADED[key] = _openai_model(settings)
            elif own == "triage":
                _LOADED[key] = _llamacpp_model(settings, TRIAGE_CONTEXT_TOKENS, TRIAGE_BATCH_TOKENS)
            else:
                _LOADED[key] = _llamacpp_model(settings)
        return _LOADED[key]


def served_model_name(settings: Settings) -> str:
    """The model an OpenAI-compatible server is asked for: ``llm.model_name``, else ``llm.model``."""
    return settings.llm.model_name or settings.llm.model


def _openai_model(settings: Settings) -> LoadedModel:
    from langchain_openai import ChatOpenAI

    if not settings.llm.base_url:
        raise LLMUnavailableError("llm.backend = 'openai' needs llm.base_url (e.g. http://host:8000/v1)")
    key = settings.llm.openai_api_key.get_secret_value() if settings.llm.openai_api_key else "not-needed"
    name = served_model_name(settings)
    chat = ChatOpenAI(
        model=name,
        base_url=settings.llm.base_url,
        api_key=key,
        temperature=settings.llm.temperature,
        max_tokens=settings.llm.max_tokens,
        # Connecting gets a short limit of its own: a server that is down fails in seconds and
        # the answer falls back at once, instead of after the whole generation's time.
        timeout=_openai_timeout(settings),
        # The engine has its own first-token and total limits and falls back when they pass;
        # a retry would only double the wait for a server that is down or overloaded.
        max_retries=0,
        seed=0,  # as the local backend: the same question gets the same answer
        extra_body=dict(settings.llm.server_params) or None,
    )
    # A remote server handles its own concurrency: a lock that never blocks.
    return LoadedModel(chat, name, lock=contextlib.nullcontext())


def _openai_timeout(settings: Settings) -> Any:
    import httpx

    total = settings.llm.timeout_s
    return httpx.Timeout(total, connect=min(5.0, total))


def resolve_gguf(settings: Settings) -> Path:
    """The GGUF to load: the configured file, or the packaged model joined and verified."""
    if settings.llm.model_path is not None:
        path = settings.llm.model_path.expanduser()
        if not path.is_file():
            raise LLMUnavailableError(f"llm.model_path {str(path)!r} is not a file")
        return path
    try:
        return models.assemble(
            settings.llm.model_dir, settings.llm.model, full_check=settings.llm.verify_model_hash
        )
    except models.ModelUnavailableError as exc:
        raise LLMUnavailableError(str(exc)) from None
    except OSError as exc:
        raise LLMUnavailableError(
            f"cannot join the packaged model into {settings.llm.model_dir}: {exc}"
        ) from None


def llamacpp_chat(model_path: Path | str, **params: Any) -> BaseChatModel:
    """LangChain's ``ChatLlamaCpp`` over a GGUF file (``params``: its fields, e.g. ``n_ctx``).

    ``ChatLlamaCpp`` passes ``rope_freq_base=10000`` by default, which overrides the model's own
    RoPE base (1e6 for Qwen2.5) and degrades its answers; 0 means "as the GGUF says".
    """
    with warnings.catch_warnings():  # langchain-community warns that it is sunset upstream
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_models import ChatLlamaCpp

    return ChatLlamaCpp(
        model_path=str(model_path), **{"rope_freq_base": 0.0, "rope_freq_scale": 0.0, **params}
    )


def _llamacpp_model(settings: Settings, n_ctx: int | None = None, n_batch: int = 512) -> LoadedModel:
    path = resolve_gguf(settings)
    try:
        chat = llamacpp_chat(
            path,
            n_ctx=n_ctx or settings.llm.n_ctx,
            n_threads=settings.llm.n_threads or os.cpu_count() or 2,
            n_batch=n_batch,
            max_tokens=settings.llm.max_tokens,
            temperature=settings.llm.temperature,
            repeat_penalty=1.0,  # copying the sources' words and numbers is the point
            seed=0,
            verbose=False,
        )
    except ValueError as exc:  # ChatLlamaCpp wraps load errors in ValueError
        raise LLMUnavailableError(f"cannot load {path}: {exc}") from None
    name = path.stem if settings.llm.model_path is not None else settings.llm.model
    return LoadedModel(chat, settings.llm.model_name or name)


def message_text(content: Any) -> str:
    """A chat message's (or chunk's) content as plain text, content blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)
