"""The benchmark's inputs: the question set, and the corpus copied up to a chunk count."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ivig_qa.settings import Settings

if TYPE_CHECKING:
    from ivig_qa.types import Chunk, SourceDocument


def load_questions(path: Path) -> list[str]:
    """The ``question`` field of every line of an evaluation set."""
    lines = path.read_text("utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def corpus_chunks(corpus_dir: Path, settings: Settings) -> tuple[list[SourceDocument], list[Chunk]]:
    """The documents in ``corpus_dir`` and their chunks, cut as an index with ``settings`` cuts them."""
    from ivig_qa.chunking import chunk_corpus
    from ivig_qa.corpus import load_corpus
    from ivig_qa.index import IndexStore

    docs = load_corpus(corpus_dir).documents
    return docs, chunk_corpus(docs, IndexStore(settings).chunker_settings())


def _vary(text: str, copy: int) -> str:
    """Make every sentence of a copy distinct, so no two copies embed the same text."""
    return re.sub(r"(?<=[a-z0-9])\.(?=\s+[A-Z])", f" (copy {copy}).", text)


def scale_corpus(src: Path, dst: Path, min_chunks: int, chunk_settings: Settings) -> int:
    """Write enough varied copies of the corpus in ``src`` to ``dst`` for ``min_chunks`` chunks.

    Each copy gets its own file names, titles (in sources.toml) and sentence text.
    Returns the number of copies.
    """
    from ivig_qa.corpus import read_sources

    docs, chunks = corpus_chunks(src, chunk_settings)
    per_copy = len(chunks)
    copies = max(1, math.ceil(min_chunks / max(1, per_copy) * 1.02))
    sources = read_sources(src)
    dst.mkdir(parents=True, exist_ok=True)
    toml_lines: list[str] = []
    for k in range(1, copies + 1):
        for doc in docs:
            stem = f"{doc.doc_id}-copy{k:04d}"
            (dst / f"{stem}{Path(doc.path).suffix}").write_text(_vary(doc.text, k), "utf-8")
            meta = dict(sources.get(doc.doc_id, {}))
            meta["title"] = f"{doc.title} (copy {k})"
            toml_lines.append(f"[{json.dumps(stem)}]")
            toml_lines += [f"{key} = {json.dumps(value)}" for key, value in meta.items()]
    (dst / "sources.toml").write_text("\n".join(toml_lines) + "\n", "utf-8")
    read_sources(dst)  # fail here, not in the build
    return copies
