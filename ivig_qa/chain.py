"""The assistant as a LangChain Runnable, for users' own chains.

``AssistantRunnable`` takes ``{"question": str, "history": [...]}`` (or a bare question) and
returns the ``Answer`` that ``Assistant.ask`` gives: it runs the assistant's own flow, reporting
each stage (condense, retrieve, policy, compose) to LangChain callbacks as a named child run.
``stream`` yields the text pieces the SSE endpoint sends, then the ``Answer``. Policy and the
disclaimer stay inside the flow: nothing in the input or the config reaches them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Required

from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_callback_manager_for_config, run_in_executor
from typing_extensions import TypedDict  # pydantic (input schema) needs it on 3.11

from ivig_qa.engines.base import Composition
from ivig_qa.retrieval import Retrieval, as_documents
from ivig_qa.types import Answer, Decision, Message

if TYPE_CHECKING:
    from ivig_qa.assistant import Assistant


class AskInput(TypedDict, total=False):
    """What the Runnable takes: the user's message and the conversation so far.

    History turns are ``{"role": "user"|"assistant", "content": ...}`` dicts, ``Message``s or
    LangChain messages (``HumanMessage`` → user, ``AIMessage`` → assistant; any other kind,
    a system message included, is refused as invalid input, as the API refuses it).
    """

    question: Required[str]
    history: Sequence[dict[str, str] | Message | BaseMessage]


_ROLES = {"human": "user", "ai": "assistant"}
_DONE = object()


class AssistantRunnable(Runnable[AskInput | str, Answer]):
    """``Assistant.ask`` as a Runnable: ``invoke``/``batch`` give the ``Answer``; ``stream``
    gives the text pieces, then the ``Answer`` last."""

    name = "ivig_qa"

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant

    def invoke(self, input: AskInput | str, config: RunnableConfig | None = None, **kwargs: Any) -> Answer:
        return self._call_with_config(self._answer, input, config)

    def stream(
        self, input: AskInput | str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str | Answer]:
        yield from self._transform_stream_with_config(iter([input]), self._pieces, config)

    async def astream(
        self, input: AskInput | str, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str | Answer]:
        """``stream``, each piece pulled in a worker thread (the flow is synchronous)."""
        pieces = self.stream(input, config)
        while (piece := await run_in_executor(None, next, pieces, _DONE)) is not _DONE:
            yield piece

    def _answer(self, input: AskInput | str, config: RunnableConfig) -> Answer:
        *_, answer = self._pieces(iter([input]), config)
        return answer

    def _pieces(self, inputs: Iterator[AskInput | str], config: RunnableConfig) -> Iterator[str | Answer]:
        """The flow's pieces; ``config`` is the child config LangChain hands a run's body."""
        question, history = _read(next(inputs))
        yield from self.assistant._run(question, history, _Stages(config))


def _read(value: Any) -> tuple[Any, Any]:
    """The question and history in an input; anything unusable is left for the flow to refuse."""
    if not isinstance(value, Mapping):
        return value, None
    history = value.get("history")
    if isinstance(history, list | tuple):
        history = [_turn(t) for t in history]
    return value.get("question"), history


def _turn(turn: Any) -> Any:
    if isinstance(turn, BaseMessage):
        role = _ROLES.get(turn.type) or getattr(turn, "role", turn.type)
        return {"role": role, "content": str(turn.text)}
    return turn


class _Stages:
    """Runs each stage of the flow as a named child run of the Runnable's run.

    The callbacks come from the child config, as for the steps of LangChain's own chains, so
    every handler (inheritable or configured by context, e.g. ``collect_runs``) sees them.
    """

    def __init__(self, config: RunnableConfig) -> None:
        self.callbacks = get_callback_manager_for_config(config)

    def __call__(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        inputs = {"input": args[0]} if args and isinstance(args[0], str) else {}
        run = self.callbacks.on_chain_start(None, inputs, name=name)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        if isinstance(result, Iterator):
            return _traced(run, result)
        run.on_chain_end(_describe(result))
        return result


def _traced(run: CallbackManagerForChainRun, pieces: Iterator[Any]) -> Iterator[Any]:
    """A streamed stage (compose): its run ends when its last piece is out."""
    last = None
    try:
        for last in pieces:
            yield last
    except GeneratorExit:
        run.on_chain_end({"closed": "before the last piece"})
        raise
    except BaseException as exc:
        run.on_chain_error(exc)
        raise
    run.on_chain_end(_describe(last))


def _describe(value: Any) -> dict[str, Any]:
    """A stage's result as the outputs a tracer records."""
    if isinstance(value, Retrieval):
        return {
            "documents": as_documents(value.passages),
            "expanded_query": value.expanded_query,
            "best_similarity": value.best_similarity,
        }
    if isinstance(value, Decision):
        return {"status": value.status.value, "reasons": [r.id for r in value.reasons]}
    if isinstance(value, Composition):
        return {"text": value.text, "citations": len(value.citations), "engine": value.engine}
    return {"output": value}
