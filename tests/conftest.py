"""Shared fixtures: the real packaged model and a real Chroma index, built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from ivig_qa.assistant import Assistant
from ivig_qa.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def session_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings over the bundled corpus with an index in a session temp folder."""
    index_dir = tmp_path_factory.mktemp("index")
    return Settings.load(corpus_dir=CORPUS, index_dir=index_dir, feedback_db=index_dir / "feedback.sqlite3")


@pytest.fixture(scope="session")
def assistant(session_settings: Settings) -> Assistant:
    """One real assistant (real model, real Chroma index) shared by the read-only tests."""
    return Assistant.load(session_settings)


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    """A private copy of the corpus for tests that change files."""
    dst = tmp_path / "corpus"
    shutil.copytree(CORPUS, dst)
    return dst


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
