"""The optional LLM answer engine: fluent answers, every sentence verified against its sources.

``LLMEngine`` implements the same ``AnswerEngine`` protocol as ``ExtractiveEngine``:

1. **Sources.** The retrieval's sentences are scored exactly as the extractive engine scores
   them (``ExtractiveEngine.candidates``); the best ones, within ``llm_context_tokens``, are
   numbered and grouped under their document's title.
2. **Generation.** A LangChain chat model (a local GGUF through llama.cpp's ``ChatLlamaCpp``, or
   any OpenAI-compatible server through ``ChatOpenAI``) is asked for a short patient-friendly
   answer using only those sentences, with ``[n]`` after each sentence. Tokens are streamed.
3. **Verification, in code.** The answer is split into sentences; the model's ``[n]`` are only a
   hint. A sentence is kept when one numbered source (first the ones it cites, then the ones
   that best match it) passes ``SupportJudge``: every number and named entity of the sentence
   appears in that source, most of its content words do, a negation is not invented, and the
   same model says yes to "does this source support this sentence?". Kept sentences cite the
   source that passed (its verbatim sentence(s) are the citation's ``quote``); the others are
   dropped and counted in ``timings["dropped_sentences"]``. Such an answer has ``generated=True``.
4. **Fallback.** When nothing survives, or the model times out or fails, the extractive engine
   answers: ``fallback_reason`` says why, and ``engine`` too, e.g.
   ``"extractive (llm fallback: timeout)"``.

The guardrails (triage, refusals, the disclaimer) stay in ``Assistant``; the model never
decides them. ``LLMSupportChecker`` is the same check for ``ivig-qa eval --checker llm``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivig_qa.embeddings import ModelNotFoundError
from ivig_qa.engines.base import Composition
from ivig_qa.engines.extractive import Candidate, ExtractiveEngine, compose_quotes
from ivig_qa.engines.llm.models import INSTALL_HINT
from ivig_qa.retrieval import Retrieval, tokenize
from ivig_qa.settings import Settings
from ivig_qa.types import Citation

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from ivig_qa.retrieval import HybridRetriever

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English text, Qwen's tokenizer: close enough for a prompt budget


class LLMUnavailableError(ModelNotFoundError):
    """The LLM engine was asked for but cannot run here; the message says what to install."""


class LLMTimeout(Exception):
    """Generation took longer than the configured limits."""


# ---------------------------------------------------------------------------------------
# Chat models (LangChain), loaded once per process and shared by the engine and the judge
# ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A chat model plus the lock that serialises calls into an in-process llama.cpp model."""

    chat: BaseChatModel
    name: str
    lock: Any = field(default_factory=threading.Lock)


_LOADED: dict[tuple, LoadedModel] = {}
_LOADING = threading.Lock()


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
    needed = {"llamacpp": ["llama_cpp", "langchain_community"], "openai": ["langchain_openai"]}[backend]
    import importlib.util

    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMUnavailableError(
            f"the LLM engine ({backend}) needs {', '.join(missing)}, which is not installed. "
            f"Install the optional extra with `{INSTALL_HINT}` (llama-cpp-python compiles from source; "
            "see the README), or set engine = 'extractive'."
        )


def _model_key(settings: Settings) -> tuple:
    return (
        settings.llm_backend,
        str(settings.llm_model_path or settings.llm_model_dir),
        settings.llm_model_name,
        settings.llm_base_url,
        settings.llm_n_ctx,
        settings.llm_n_threads,
        settings.llm_temperature,
        settings.llm_max_tokens,
    )


def load_chat_model(settings: Settings) -> LoadedModel:
    """The configured chat model (cached: the engine and the eval judge share one copy)."""
    require_extra(settings.llm_backend)
    key = _model_key(settings)
    with _LOADING:
        if key not in _LOADED:
            if settings.llm_backend == "openai":
                _LOADED[key] = _openai_model(settings)
            else:
                _LOADED[key] = _llamacpp_model(settings)
        return _LOADED[key]


def _openai_model(settings: Settings) -> LoadedModel:
    from langchain_openai import ChatOpenAI

    if not settings.llm_base_url:
        raise LLMUnavailableError("llm_backend = 'openai' needs llm_base_url (e.g. http://host:8000/v1)")
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
    chat = ChatOpenAI(
        model=settings.llm_model_name,
        base_url=settings.llm_base_url,
        api_key=key,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        timeout=settings.llm_timeout_s,
        max_retries=1,
    )
    # A remote server handles its own concurrency: a lock that never blocks.
    return LoadedModel(chat, settings.llm_model_name, lock=contextlib.nullcontext())


def resolve_gguf(settings: Settings) -> Path:
    """The GGUF to load: the configured file, or the packaged model joined and verified."""
    from ivig_qa.engines.llm import models

    if settings.llm_model_path is not None:
        path = settings.llm_model_path.expanduser()
        if not path.is_file():
            raise LLMUnavailableError(f"llm_model_path {str(path)!r} is not a file")
        return path
    try:
        return models.assemble(settings.llm_model_dir, full_check=settings.llm_verify_model_hash)
    except models.ModelUnavailableError as exc:
        raise LLMUnavailableError(str(exc)) from None
    except OSError as exc:
        raise LLMUnavailableError(
            f"cannot join the packaged model into {settings.llm_model_dir}: {exc}"
        ) from None


def llamacpp_chat(model_path: Path | str, **params: Any) -> BaseChatModel:
    """LangChain's ``ChatLlamaCpp`` over a GGUF file (``params``: its fields, e.g. ``n_ctx``).

    ``ChatLlamaCpp`` passes ``rope_freq_base=10000`` by default, which overrides the model's own
    RoPE base (1e6 for Qwen2.5) and degrades its answers; 0 means "as the GGUF says".
    """
    import warnings

    with warnings.catch_warnings():  # langchain-community warns that it is sunset upstream
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_models import ChatLlamaCpp

    return ChatLlamaCpp(
        model_path=str(model_path), **{"rope_freq_base": 0.0, "rope_freq_scale": 0.0, **params}
    )


def _llamacpp_model(settings: Settings) -> LoadedModel:
    import os

    path = resolve_gguf(settings)
    try:
        chat = llamacpp_chat(
            path,
            n_ctx=settings.llm_n_ctx,
            n_threads=settings.llm_n_threads or os.cpu_count() or 2,
            n_batch=512,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            repeat_penalty=1.0,  # copying the sources' words and numbers is the point
            seed=0,
            verbose=False,
        )
    except ValueError as exc:  # ChatLlamaCpp wraps load errors in ValueError
        raise LLMUnavailableError(f"cannot load {path}: {exc}") from None
    return LoadedModel(chat, settings.llm_model_name)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


# ---------------------------------------------------------------------------------------
# The support check: numbers, entities, content words, negation, then the model's yes/no
# ---------------------------------------------------------------------------------------
_NUMBER_WORDS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "twenty": "20",
    "hundred": "100",
    "thousand": "1000",
    "once": "1",
    "twice": "2",
    "thrice": "3",
}
# Units of time and frequency: "monthly" in a sentence needs months in its source.
_UNIT = re.compile(
    r"\b(?:(second|minute|hour|day|week|month|year)s?|(daily)|(weekly)|(monthly)|(yearly|annual(?:ly)?))\b",
    re.IGNORECASE,
)
_UNIT_OF = {"daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_ENTITY = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nor|neither|cannot|without|unlikely|lack|lacks|unknown|unclear)\b|n['’]t\b",
    re.IGNORECASE,
)
# Words every answer may use without the passage spelling them out.
_FREE_ENTITIES = frozenset({"ivig", "i", "ig", "iv"})


def numbers(text: str) -> set[str]:
    """Numbers as values: "1,000" = "1000", "2.0" = "2", "two" = "2"."""
    out: set[str] = set()
    for raw in _NUMBER.findall(text):
        word = _NUMBER_WORDS.get(raw.lower())
        value = word or raw.replace(",", "")
        try:
            out.add(format(float(value), "g"))
        except ValueError:
            out.add(value)
    return out


def units(text: str) -> set[str]:
    """Time units and frequencies, canonical ("weekly" = "week", "annually" = "year")."""
    out: set[str] = set()
    for m in _UNIT.finditer(text):
        word = next(g for g in m.groups() if g).lower()
        out.add(_UNIT_OF.get(word, "year" if word.startswith("annual") else word))
    return out


def entities(statement: str) -> list[str]:
    """Named things: acronyms and mixed-case words anywhere, capitalised words after the first."""
    found: list[str] = []
    for i, m in enumerate(_ENTITY.finditer(statement)):
        word = re.sub(r"['’]s$", "", m.group()).strip("'’-")
        if not word or word.lower() in _FREE_ENTITIES:
            continue
        inner_caps = any(ch.isupper() for ch in word[1:])
        if inner_caps or (i > 0 and word[0].isupper()):
            found.append(word)
    return found


def _has_word(text_low: str, word: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}", text_low) is not None


def lexical_problem(statement: str, passage: str, min_overlap: float) -> str | None:
    """Why ``passage`` cannot support ``statement`` on its words alone (None: it may)."""
    missing_numbers = numbers(statement) - numbers(passage)
    if missing_numbers:
        return f"number(s) not in the source: {', '.join(sorted(missing_numbers))}"
    missing_units = units(statement) - units(passage)
    if missing_units:
        return f"time unit(s) not in the source: {', '.join(sorted(missing_units))}"
    low = passage.lower()
    missing = [e for e in entities(statement) if not _has_word(low, e)]
    if missing:
        return f"name(s) not in the source: {', '.join(missing)}"
    terms = set(tokenize(statement))
    if terms:
        source_terms = set(tokenize(passage))
        share = len(terms & source_terms) / len(terms)
        if share < min_overlap:
            return f"only {share:.0%} of its words are in the source"
    if _NEGATION.search(statement) and not _NEGATION.search(passage):
        return "negates what the source does not"
    return None


JUDGE_SYSTEM = "You check facts against a source text. Reply with one word: yes or no."
JUDGE_USER = (
    "Source: {passage}\n\nClaim: {statement}\n\n"
    "Does the source state everything the claim says? Reply yes or no."
)


class SupportJudge:
    """Decides whether passage text supports a statement: lexical checks, then the model."""

    def __init__(self, model: LoadedModel | None, settings: Settings) -> None:
        self.model = model if settings.llm_judge else None
        self.min_overlap = settings.llm_min_overlap

    @staticmethod
    def verbatim(statement: str, passage: str) -> bool:
        """The statement is quoted from the passage (spacing, case and final stop aside)."""
        claim = " ".join(statement.split()).rstrip(".!?").casefold()
        return bool(claim) and claim in " ".join(passage.split()).casefold()

    def judge(self, statement: str, passage: str) -> bool:
        """The model's yes/no (True when no judge is configured)."""
        if self.model is None:
            return True
        from langchain_core.messages import HumanMessage, SystemMessage

        messages = [
            SystemMessage(JUDGE_SYSTEM),
            HumanMessage(JUDGE_USER.format(passage=" ".join(passage.split()), statement=statement)),
        ]
        with self.model.lock:
            reply = self.model.chat.invoke(messages, max_tokens=3, temperature=0.0)
        return _text(reply.content).strip().lower().lstrip("\"'*").startswith("yes")

    def check(self, statement: str, passage: str, budget: _Budget | None = None) -> str | None:
        """None when supported, else the reason. A verbatim quote needs no model to say so.

        With a ``budget``, a model call is made only while calls and time are left (and counted).
        """
        if self.verbatim(statement, passage):
            return None
        problem = lexical_problem(statement, passage, self.min_overlap)
        if problem:
            return problem
        if budget is not None and self.model is not None:
            if budget.calls >= budget.max_calls:
                return "verification budget used up"
            if time.perf_counter() > budget.deadline:
                return "verification time limit"
            budget.calls += 1
        return None if self.judge(statement, passage) else "the judge says the source does not support it"


class LLMSupportChecker:
    """``SupportChecker`` for ``ivig-qa eval --checker llm``: the engine's own verification."""

    name = "llm"

    def __init__(self, judge: SupportJudge) -> None:
        self._judge = judge

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LLMSupportChecker:
        settings = settings or Settings()
        try:
            require_extra(settings.llm_backend)
        except LLMUnavailableError as exc:
            raise ValueError(f"--checker llm: {exc}") from None
        return cls(_LazyJudge(settings))

    def supports(self, statement: str, passages: list[str]) -> bool:
        return self._judge.check(statement, " ".join(passages)) is None


class _LazyJudge(SupportJudge):
    """Loads the model on the first check (after the assistant, which may share it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(None, settings)
        self._settings = settings
        self._loaded = not settings.llm_judge

    def judge(self, statement: str, passage: str) -> bool:
        if not self._loaded:
            self.model = load_chat_model(self._settings)
            self._loaded = True
        return super().judge(statement, passage)


# ---------------------------------------------------------------------------------------
# Parsing the generated answer
# ---------------------------------------------------------------------------------------
_CITE = r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]"
_CITE_RE = re.compile(_CITE)
_CITES = rf"(?:{_CITE}\s*)+"
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_ABBREV = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Prof|St|vs|e\.g|i\.e|etc|al|approx|No)\.$", re.IGNORECASE)


# "From the first source, …", "According to “IVIG for Lupus” [2], …": where, not what.
_LEAD_IN = re.compile(
    r"^(?:from|according to|in|as (?:stated|noted|said) in)\s+(?:the\s+)?"
    r"(?:\"[^\"]*\"|“[^”]*”|\[\d+\]|sources?\s*\d+|(?:first|second|third|fourth|fifth|sixth|other|same|"
    r"last|\w+)\s+sources?|sources?)(?:\s*\[\d+\])?\s*[,:]\s*|^(?:from|according to)\s*[,:]\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Generated:
    """One sentence of the model's answer, markers removed, with the numbers it cited."""

    text: str
    cites: tuple[int, ...]


def _end_before_cites(m: re.Match[str]) -> str:
    """A full stop before markers that close a sentence without one ("month [1] It …")."""
    before = m.string[: m.start()]
    return m.group(1) if re.search(r"[.!?][\"”’)]*\s*$", before) or not before.strip() else "." + m.group(1)


def split_generated(answer: str) -> list[Generated]:
    """Sentences with their ``[n]``; markers may come before or after the full stop."""
    lines = []
    for line in answer.replace("**", "").splitlines():
        line = _BULLET.sub("", line).strip()
        lead = re.match(rf"^({_CITES})(.+)$", line)
        if lead:  # "[2] Sentence." -> "Sentence. [2]"
            line = f"{lead.group(2).strip()} {lead.group(1).strip()}"
        if not line:
            continue
        if not re.search(r"[.!?:]\s*$|\]\s*$", line):
            line += "."
        lines.append(line)
    text = " ".join(lines)
    text = re.sub(rf"\s*({_CITES})([.!?])", r"\2 \1", text)  # "month [1]." -> "month. [1]"
    text = re.sub(rf"(\s*{_CITES})(?=\s+[A-Z\"“(]|\s*$)", _end_before_cites, text)  # "month [1] It"
    units = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"“(\[])|(?<=\])\s+(?=[A-Z0-9\"“(])", text)
    merged: list[str] = []
    for unit in units:
        if merged and (_ABBREV.search(merged[-1]) or unit.startswith("[")):
            merged[-1] = f"{merged[-1]} {unit}"
        else:
            merged.append(unit)
    out: list[Generated] = []
    for unit in merged:
        cites = tuple(int(n) for group in _CITE_RE.findall(unit) for n in re.findall(r"\d+", group))
        clean = " ".join(_CITE_RE.sub(" ", unit).split())
        clean = re.sub(r"\s+([.,;:!?])", r"\1", clean).strip()
        if clean.endswith(":"):  # a heading or lead-in ("From “IVIG for Lupus”:") states nothing
            continue
        clean = _LEAD_IN.sub("", clean)
        clean = clean[:1].upper() + clean[1:]
        if re.search(r"[A-Za-z0-9]", clean):
            out.append(Generated(clean, tuple(dict.fromkeys(cites))))
    return out


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------
@dataclass
class Source:
    """A numbered source span in the prompt: verbatim text at ``start:end`` of its document."""

    n: int
    candidate: Candidate
    start: int
    end: int
    text: str

    @property
    def title(self) -> str:
        return self.candidate.passage.chunk.title


@dataclass
class _Budget:
    """Judge calls and time left for verifying one answer."""

    max_calls: int
    deadline: float
    calls: int = 0


@dataclass
class Plan:
    """What the extractive scoring gave one question: the prompt's sources and, for the
    supporting quotes and any fallback, the scored candidates (scored once per question)."""

    sources: list[Source]
    ranked: list[Candidate]
    selected: list[Candidate]


SYSTEM_PROMPT = (
    "You answer questions about IVIG for patients, using only the numbered source sentences.\n"
    "Write 2 to 4 short sentences in plain words. When several sources answer, say what each one says. "
    "Copy numbers, doses and names exactly as the sources write them. End each sentence with the "
    "number of its source, like [2]. Add nothing that the sources do not say."
)


class LLMEngine:
    """Generates a short answer from numbered source sentences and keeps only verified sentences."""

    def __init__(
        self,
        retriever: HybridRetriever,
        settings: Settings,
        model: LoadedModel,
        judge: SupportJudge | None = None,
    ) -> None:
        self.retriever = retriever
        self.settings = settings
        self.model = model
        self.judge = judge or SupportJudge(model, settings)
        self.extractive = ExtractiveEngine(retriever, settings)
        self.name = f"llm:{model.name}"

    @classmethod
    def from_settings(cls, retriever: HybridRetriever, settings: Settings) -> LLMEngine:
        """Load (or reuse) the configured chat model; a clear ``LLMUnavailableError`` otherwise."""
        return cls(retriever, settings, load_chat_model(settings))

    # -- the prompt --------------------------------------------------------------------
    def plan(self, question: str, retrieval: Retrieval) -> Plan:
        """The sentences the extractive engine would quote, within the prompt budget, numbered.

        Offering the model only the extractive selection (strong enough, de-duplicated, spread
        over the documents) keeps a small model on topic. Also returns the candidates (for the
        supporting quotes and the fallback).
        """
        ranked = self.extractive.candidates(question, retrieval)
        selected = self.extractive.select(ranked)
        s = self.settings
        budget = s.llm_context_tokens * CHARS_PER_TOKEN  # the whole prompt, titles included
        picked: list[tuple[Candidate, int, int, str]] = []
        used = len(SYSTEM_PROMPT) + len(question) + 40
        docs: set[str] = set()
        for cand in selected:
            if len(picked) >= s.llm_max_passages:
                break
            chunk = cand.passage.chunk
            start, end = cand.quote_start, cand.quote_end
            if any(
                c.sentence.doc_id == cand.sentence.doc_id and st < end and start < en
                for c, st, en, _ in picked
            ):
                continue
            text = chunk.text[start - chunk.start : end - chunk.start]
            cost = len(" ".join(text.split())) + 6
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

    @staticmethod
    def prompt_text(question: str, sources: list[Source]) -> str:
        lines = ["Sources:"]
        title = None
        for src in sources:
            if src.title != title:
                title = src.title
                lines.append(f"From “{title}”:")
            lines.append(f"[{src.n}] {' '.join(src.text.split())}")
        lines += ["", f"Question: {question}"]
        return "\n".join(lines)

    def messages(self, question: str, sources: list[Source]) -> list:
        from langchain_core.messages import HumanMessage, SystemMessage

        return [SystemMessage(SYSTEM_PROMPT), HumanMessage(self.prompt_text(question, sources))]

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
                    for chunk in self.model.chat.stream(messages, stop=["\nQuestion:", "\nSources:"]):
                        if cancel.is_set():
                            break
                        pieces.put(_text(chunk.content))
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
                limit = self.settings.llm_first_token_timeout_s if first else self.settings.llm_timeout_s
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
                if time.perf_counter() - started > self.settings.llm_timeout_s:
                    raise LLMTimeout()
                if item:
                    yield item
        finally:
            cancel.set()
            timings["llm_generate"] = round((time.perf_counter() - started) * 1000, 2)
            timings["llm_chunks"] = float(count)

    # -- verification ----------------------------------------------------------------------
    def verify(
        self, generated: list[Generated], sources: list[Source], budget: _Budget | None = None
    ) -> tuple[list[tuple[Generated, list[Source]]], list[tuple[str, str]]]:
        """Each sentence kept with the source(s) that support it, or dropped with the reason.

        ``budget`` (shared by the sentences of one answer) limits the judge calls and time.
        """
        budget = budget or _Budget(self.settings.llm_judge_max_calls, time.perf_counter() + 3600)
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
        self, sentence: Generated, sources: list[Source], by_n: dict[int, Source], budget: _Budget
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
        if not sources or retrieval.best_similarity < self.settings.min_support_score:
            # The guardrails will say "not in the sources"; no need to run the model.
            yield self._fallback(plan, limit, "no relevant sources", timings, skipped=True)
            return
        messages = self.messages(question, sources)
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
        budget = _Budget(self.settings.llm_judge_max_calls, since + self.settings.llm_timeout_s)
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
            self.settings.llm_supporting_quotes
            if limit is None
            else min(limit, self.settings.llm_supporting_quotes)
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
        base = compose_quotes(chosen, self.extractive.name)
        engine = f"extractive (llm {'skipped' if skipped else 'fallback'}: {reason})"
        return Composition(base.text, base.citations, engine, fallback_reason=reason, timings=timings)


SUPPORTING_QUOTES_LEAD = "More from the sources, word for word:"


def _citation(n: int, cand: Candidate, start: int, end: int) -> Citation:
    chunk = cand.passage.chunk
    return Citation(
        n=n,
        doc_id=chunk.doc_id,
        title=chunk.title,
        chunk_id=chunk.chunk_id,
        text=chunk.text,
        quote=chunk.text[start - chunk.start : end - chunk.start],
        start=start,
        end=end,
        score=round(cand.score, 4),
    )


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
                citations.append(_citation(len(citations) + 1, src.candidate, src.start, src.end))
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
            citations.append(_citation(len(citations) + 1, cand, cand.quote_start, cand.quote_end))
            lines.append(f"- {' '.join(citations[-1].quote.split())} [{len(citations)}]")
        text = f"{text}\n\n" + "\n".join(lines)
    return text, citations
