"""Stage 3: the Chroma index of chunks and sentences, kept fresh by a manifest.

Layout inside one Chroma database (a local folder or a Chroma server):

* ``<prefix>_chunks_<version>``    — chunks, embedded with title + heading for context;
* ``<prefix>_sentences_<version>`` — single sentences (a finer granularity for retrieval and
  the vectors the extractive engine scores);
* ``<prefix>_meta``                — one record whose document is the active manifest.

A build writes a *new* version next to the active one (copying the vectors of unchanged
documents, embedding only changed ones) and then switches the manifest record in one
write. A build that dies halfway leaves the previous version active and answering; the
next build removes the orphaned collections.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings

from ivig_qa.chunking import ChunkerSettings, chunk_document
from ivig_qa.corpus import load_corpus
from ivig_qa.embeddings import load_embeddings, model_fingerprint
from ivig_qa.settings import Settings
from ivig_qa.types import Chunk, Sentence, SourceDocument

log = logging.getLogger(__name__)

MANIFEST_ID = "manifest"
Progress = Callable[[int, int, str], None]


class IndexUnavailableError(RuntimeError):
    """The index is missing, corrupt or unreachable; the message says what to do."""


@dataclass
class Manifest:
    """What an index version was built from; any difference makes it stale."""

    version: str
    embedding_model: str
    chunker: str
    documents: dict[str, str]
    titles: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    sentences: int = 0
    built_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Manifest:
        return cls(**json.loads(raw))


@dataclass
class BuildSummary:
    """What ``ivig-qa index`` reports."""

    documents: int
    chunks: int
    sentences: int
    embedded_documents: list[str]
    reused_documents: list[str]
    removed_documents: list[str]
    seconds: float
    rebuilt: bool
    problems: list[str]
    warnings: list[str]


def _chroma_settings() -> ChromaSettings:
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def open_client(settings: Settings) -> ClientAPI:
    """The Chroma client: a server when ``chroma_url`` is set, else the local folder."""
    try:
        if settings.chroma_url:
            from urllib.parse import urlparse

            url = urlparse(settings.chroma_url)
            return chromadb.HttpClient(
                host=url.hostname or "localhost",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_chroma_settings(),
            )
        settings.index_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(settings.index_dir), settings=_chroma_settings())
    except Exception as exc:  # chromadb raises many types for a bad folder or a dead server
        where = settings.chroma_url or settings.index_dir
        raise IndexUnavailableError(
            f"cannot open the index at {where}: {exc}. "
            "If the folder is damaged, run `ivig-qa index --rebuild`."
        ) from exc


def _sentence_text(sentence: Sentence, chunk: Chunk) -> str:
    heading = f"{chunk.heading}: " if chunk.heading else ""
    return f"{heading}{sentence.text}"


def chunk_metadata(chunk: Chunk, doc: SourceDocument) -> dict[str, Any]:
    meta = {
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "heading": chunk.heading,
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "sentences": json.dumps([[s.start, s.end] for s in chunk.sentences]),
    }
    for key in ("publisher", "url"):
        if doc.metadata.get(key):
            meta[key] = str(doc.metadata[key])
    return meta


def chunk_from_record(chunk_id: str, meta: dict[str, Any]) -> Chunk:
    """Rebuild a ``Chunk`` from what Chroma stores (no corpus files needed at answer time)."""
    start, text = int(meta["start"]), str(meta["text"])
    sentences = [
        Sentence(str(meta["doc_id"]), a, b, text[a - start : b - start])
        for a, b in json.loads(str(meta["sentences"]))
    ]
    return Chunk(
        chunk_id=chunk_id,
        doc_id=str(meta["doc_id"]),
        title=str(meta["title"]),
        heading=str(meta.get("heading") or ""),
        start=start,
        end=int(meta["end"]),
        text=text,
        sentences=sentences,
    )


class IndexStore:
    """Builds, versions and opens the index. One instance per settings object."""

    def __init__(self, settings: Settings, embeddings: Embeddings | None = None) -> None:
        self.settings = settings
        self._embeddings = embeddings
        self._client: ClientAPI | None = None

    # -- plumbing ---------------------------------------------------------------------
    @property
    def embeddings(self) -> Embeddings:
        if self._embeddings is None:
            self._embeddings = load_embeddings(
                self.settings.embedding_model, self.settings.embedding_batch_size
            )
        return self._embeddings

    @property
    def client(self) -> ClientAPI:
        if self._client is None:
            self._client = open_client(self.settings)
        return self._client

    def _name(self, kind: str, version: str = "") -> str:
        return f"{self.settings.collection_prefix}_{kind}" + (f"_{version}" if version else "")

    def _collection(self, name: str) -> Collection:
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def vectorstore(self, kind: str, version: str) -> Chroma:
        """A LangChain vector store over one collection of a version."""
        return Chroma(
            client=self.client,
            collection_name=self._name(kind, version),
            embedding_function=self.embeddings,
            create_collection_if_not_exists=False,
        )

    def target(self, docs: Iterable[SourceDocument]) -> Manifest:
        return Manifest(
            version="",
            embedding_model=model_fingerprint(self.settings.embedding_model),
            chunker=self.chunker_settings().fingerprint(),
            documents={d.doc_id: d.content_hash for d in docs},
            titles={d.doc_id: d.title for d in docs},
        )

    def chunker_settings(self) -> ChunkerSettings:
        return ChunkerSettings(self.settings.chunk_max_chars, self.settings.chunk_overlap_sentences)

    # -- reading ------------------------------------------------------------------------
    def manifest(self) -> Manifest | None:
        """The active manifest, or None when no complete build exists."""
        try:
            got = self._collection(self._name("meta")).get(ids=[MANIFEST_ID], include=["documents"])
        except Exception as exc:
            raise IndexUnavailableError(
                f"the index at {self.settings.chroma_url or self.settings.index_dir} is unreadable ({exc}); "
                "run `ivig-qa index --rebuild`"
            ) from exc
        docs = got.get("documents") or []
        return Manifest.from_json(docs[0]) if docs and docs[0] else None

    def stale_reason(self, docs: list[SourceDocument]) -> str | None:
        """Why the index must be (re)built for these documents, or None when it is fresh."""
        current = self.manifest()
        if current is None:
            return "no index yet"
        want = self.target(docs)
        if current.embedding_model != want.embedding_model:
            return "embedding model changed"
        if current.chunker != want.chunker:
            return "chunker settings changed"
        if current.documents != want.documents:
            changed = sorted(set(current.documents.items()) ^ set(want.documents.items()))
            return f"documents changed: {', '.join(sorted({k for k, _ in changed}))}"
        return None

    def load_chunks(self, version: str) -> list[Chunk]:
        got = self.client.get_collection(self._name("chunks", version)).get(include=["metadatas"])
        chunks = [chunk_from_record(i, m) for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)]
        return sorted(chunks, key=lambda c: (c.doc_id, c.start))

    # -- building -------------------------------------------------------------------------
    def build(self, rebuild: bool = False, progress: Progress | None = None) -> BuildSummary:
        """Bring the index up to date with the corpus folder; atomic and incremental."""
        started = time.perf_counter()
        if rebuild and not self.settings.chroma_url:
            self._wipe_local()
        report = load_corpus(self.settings.corpus_dir)
        if not report.documents:
            raise IndexUnavailableError(
                f"no usable documents in {self.settings.corpus_dir}"
                + (f": {'; '.join(report.problems)}" if report.problems else "")
            )
        docs = {d.doc_id: d for d in report.documents}
        want = self.target(report.documents)
        current = None if rebuild else self.manifest()
        compatible = (
            current is not None
            and current.embedding_model == want.embedding_model
            and current.chunker == want.chunker
        )
        reuse = (
            [d for d, h in want.documents.items() if current.documents.get(d) == h]
            if compatible and current
            else []
        )
        embed = [d for d in want.documents if d not in reuse]
        removed = sorted(set(current.documents) - set(want.documents)) if current else []

        if current is not None and not embed and not removed:
            self._drop_orphans(keep=current.version)
            return BuildSummary(
                len(docs), current.chunks, current.sentences, [], reuse, [],
                time.perf_counter() - started, False, report.problems, report.warnings,
            )  # fmt: skip

        version = f"v{time.strftime('%Y%m%d%H%M%S')}{uuid.uuid4().hex[:6]}"
        self._drop_orphans(keep=current.version if current else None)
        chunks_col = self._collection(self._name("chunks", version))
        sent_col = self._collection(self._name("sentences", version))
        if reuse and current:
            self._copy_documents(current.version, version, reuse)
        new_chunks = [c for d in embed for c in chunk_document(docs[d], self.chunker_settings())]
        self._embed_chunks(version, new_chunks, docs, progress)

        want.version = version
        want.chunks = chunks_col.count()
        want.sentences = sent_col.count()
        want.built_at = time.time()
        # The switch: one write of the manifest record makes the new version active.
        self._collection(self._name("meta")).upsert(
            ids=[MANIFEST_ID], documents=[want.to_json()], embeddings=[[0.0, 0.0, 1.0]]
        )
        self._drop_orphans(keep=version)
        return BuildSummary(
            len(docs), want.chunks, want.sentences, embed, reuse, removed,
            time.perf_counter() - started, True, report.problems, report.warnings,
        )  # fmt: skip

    def _embed_chunks(
        self,
        version: str,
        chunks: list[Chunk],
        docs: dict[str, SourceDocument],
        progress: Progress | None,
    ) -> None:
        """Embed chunks and their sentences in batches, reporting progress per batch."""
        chunk_store = self.vectorstore("chunks", version)
        sent_store = self.vectorstore("sentences", version)
        seen: set[str] = set()
        batch = max(1, self.settings.embedding_batch_size)
        total = len(chunks)
        for i in range(0, total, batch):
            part = chunks[i : i + batch]
            chunk_store.add_texts(
                texts=[c.context_text() for c in part],
                metadatas=[chunk_metadata(c, docs[c.doc_id]) for c in part],
                ids=[c.chunk_id for c in part],
            )
            sentences = []
            for c in part:
                for s in c.sentences:
                    if s.sentence_id not in seen:
                        seen.add(s.sentence_id)
                        sentences.append((s, c))
            if sentences:
                sent_store.add_texts(
                    texts=[_sentence_text(s, c) for s, c in sentences],
                    metadatas=[
                        {"doc_id": s.doc_id, "start": s.start, "end": s.end, "chunk_id": c.chunk_id}
                        for s, c in sentences
                    ],
                    ids=[s.sentence_id for s, _ in sentences],
                )
            if progress:
                progress(min(i + batch, total), total, part[-1].doc_id)

    def _copy_documents(self, old: str, new: str, doc_ids: list[str]) -> None:
        """Carry unchanged documents' records and vectors over without re-embedding."""
        for kind in ("chunks", "sentences"):
            src = self.client.get_collection(self._name(kind, old))
            dst = self._collection(self._name(kind, new))
            got = src.get(
                where={"doc_id": {"$in": doc_ids}}, include=["embeddings", "documents", "metadatas"]
            )
            ids = got["ids"]
            for i in range(0, len(ids), 1000):
                dst.add(
                    ids=ids[i : i + 1000],
                    embeddings=got["embeddings"][i : i + 1000],
                    documents=got["documents"][i : i + 1000],
                    metadatas=got["metadatas"][i : i + 1000],
                )

    def _drop_orphans(self, keep: str | None) -> None:
        """Remove collections of versions that are not active (failed or superseded builds)."""
        prefix = self.settings.collection_prefix
        for col in self.client.list_collections():
            name = col if isinstance(col, str) else col.name
            if name == self._name("meta") or not name.startswith(f"{prefix}_"):
                continue
            if keep is None or not name.endswith(f"_{keep}"):
                self.client.delete_collection(name)

    def _wipe_local(self) -> None:
        """``--rebuild``: start from an empty folder, whatever state the old one is in."""
        self._client = None
        SharedSystemClient.clear_system_cache()  # chromadb caches open databases per path
        path = self.settings.index_dir
        if path.exists():
            shutil.rmtree(path)
        log.info("removed %s for a clean rebuild", path)
