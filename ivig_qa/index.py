"""Stage 3: the Chroma index of chunks and sentences, kept fresh by a manifest.

Layout inside one Chroma database (a local folder or a Chroma server):

* ``<prefix>_chunks_<version>``    — chunks, embedded with title + heading for context;
* ``<prefix>_sentences_<version>`` — single sentences (a finer granularity for retrieval and
  the vectors the extractive engine scores);
* ``<prefix>_questions_<version>`` — the doc2query questions of each sentence (``doc2query``),
  embedded, with their sentence's id; a sentence without cached questions has none;
* ``<prefix>_meta``                — one record whose document is the active manifest.

A build writes a *new* version next to the active one (copying the vectors of unchanged
documents, embedding only changed ones) and then switches the manifest record in one
write. A build that dies halfway leaves the previous version active and answering; the
next build removes the orphaned collections.

``--rebuild`` is the same switch without reuse: every document is embedded again into a new
version beside the old one, which keeps answering until the manifest names the new one (a
rebuild killed halfway changes nothing). Only an index that cannot be read at all (a
damaged database folder, an unreadable manifest) is set aside first: the local folder is
moved to ``<index_dir>.damaged-<time>`` (deleted once the new index is built), on a server
this prefix's collections are dropped (never another prefix's).

On a Chroma server several app servers read the index while an indexer job writes it, so
a build there keeps the version it replaced until the next build (the app servers switch
to the new one within ``chroma_poll_s``), and requests time out after ``chroma_timeout_s``
instead of hanging on a dead server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
import chromadb.errors
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings

from ivig_qa import doc2query
from ivig_qa.chunking import ChunkerSettings, chunk_document
from ivig_qa.corpus import load_corpus
from ivig_qa.embeddings import StoreEmbeddings, TunedEmbeddings, model_fingerprint
from ivig_qa.records import (  # noqa: F401 (embedding_texts: the bench imports it from here)
    _new_sentences,
    _sentence_text,
    chunk_from_record,
    chunk_metadata,
    embedding_texts,
)
from ivig_qa.settings import Settings
from ivig_qa.types import Chunk, SourceDocument

log = logging.getLogger(__name__)

MANIFEST_ID = "manifest"
Progress = Callable[[int, int, str], None]
_VERSION = r"v\d{14}[0-9a-f]{6}"


class IndexUnavailableError(RuntimeError):
    """The index is missing, corrupt or unreachable; the message says what to do."""


@dataclass
class Manifest:
    """What an index version was built from; any difference in the first four (or in the
    doc2query cache it embedded) makes it stale.

    ``documents`` maps each doc_id to the SHA-256 of its file's bytes. ``problems`` and
    ``warnings`` are what the build reported about the corpus (files not indexed and why),
    for ``/api/health``.
    """

    version: str
    embedding_model: str
    chunker: str
    documents: dict[str, str]
    titles: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    sentences: int = 0
    built_at: float = 0.0
    doc2query: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Manifest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


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
    if settings.index.chroma_url:
        return _open_http_client(settings.index.chroma_url, settings.index.chroma_timeout_s)
    try:
        settings.index.index_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(settings.index.index_dir), settings=_chroma_settings())
    except Exception as exc:  # chromadb raises many types for a bad folder
        raise IndexUnavailableError(
            f"cannot open the index at {settings.index.index_dir}: {exc}. "
            "If the folder is damaged, run `ivig-qa index --rebuild`."
        ) from exc


def _open_http_client(chroma_url: str, timeout_s: float) -> ClientAPI:
    """A Chroma server client whose requests time out, so a dead server fails answers fast.

    chromadb's HTTP client waits forever by default (``httpx.Client(timeout=None)``) and
    talks to the server while it is being created, so the server is probed with the
    timeout first and the client's session gets the timeout right after.
    """
    url = urlparse(chroma_url)
    try:
        httpx.get(f"{chroma_url.rstrip('/')}/api/v2/heartbeat", timeout=timeout_s).raise_for_status()
        client = chromadb.HttpClient(
            host=url.hostname or "localhost",
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=_chroma_settings(),
        )
    except Exception as exc:  # connection refused, timeout, not a Chroma server…
        raise IndexUnavailableError(f"the Chroma server at {chroma_url} is unreachable ({exc})") from exc
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(timeout_s)
    return client


# The failures that mean "the index cannot be used now" (the server maps each to a 503).
UNAVAILABLE_ERRORS = (IndexUnavailableError, httpx.TransportError, chromadb.errors.NotFoundError)


def is_unavailable(exc: BaseException) -> bool:
    """True for failures that mean "the index cannot be used now" rather than a bug.

    A dead or hung Chroma server (transport errors, timeouts), a collection dropped by a
    rebuild, or our own ``IndexUnavailableError``: callers turn these into a clear
    "try again shortly" instead of a crash.
    """
    return isinstance(exc, UNAVAILABLE_ERRORS)


class IndexStore:
    """Builds, versions and opens the index. One instance per settings object."""

    def __init__(self, settings: Settings, embeddings: Embeddings | None = None) -> None:
        self.settings = settings
        # Given embeddings (tests, the bench) do both jobs; by default questions and documents
        # each get their own encoder (see ``StoreEmbeddings``).
        self.embeddings: Embeddings = (
            StoreEmbeddings(settings)
            if embeddings is None
            else TunedEmbeddings(embeddings, settings.index.query_threads, settings.index.build_threads)
        )
        self._client: ClientAPI | None = None
        self._stores: dict[tuple[str, str], Chroma] = {}
        self._questions: dict[str, dict[str, np.ndarray]] = {}

    # -- plumbing ---------------------------------------------------------------------
    @property
    def location(self) -> str:
        """Where the index lives: the Chroma server's URL or the local folder."""
        return str(self.settings.index.chroma_url or self.settings.index.index_dir)

    @property
    def client(self) -> ClientAPI:
        if self._client is None:
            self._client = open_client(self.settings)
        return self._client

    def _name(self, kind: str, version: str = "") -> str:
        return f"{self.settings.index.collection_prefix}_{kind}" + (f"_{version}" if version else "")

    def _collection(self, name: str) -> Collection:
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def _owned_version(self, name: str) -> str | None:
        """The version of one of this prefix's versioned collections ("" for the manifest), else None.

        Exact matching matters on a shared Chroma server: prefix ``ivig`` must never touch
        ``ivig_test_chunks_…`` or anything else that merely starts with ``ivig_``.
        """
        prefix = re.escape(self.settings.index.collection_prefix)
        if name == self._name("meta"):
            return ""
        m = re.fullmatch(rf"{prefix}_(?:chunks|sentences|questions)_({_VERSION})", name)
        return m.group(1) if m else None

    def vectorstore(self, kind: str, version: str) -> Chroma:
        """A LangChain vector store over one collection of a version (opened once, then reused).

        Opening costs a round trip (a sqlite read locally, an HTTP call on a server), and
        retrieval asks for the stores on every question.
        """
        key = (kind, version)
        store = self._stores.get(key)
        if store is None:
            store = Chroma(
                client=self.client,
                collection_name=self._name(kind, version),
                embedding_function=self.embeddings,
                create_collection_if_not_exists=False,
            )
            self._stores[key] = store
        return store

    def nearest(self, kind: str, version: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        """The ids and cosine similarities of one collection's ``k`` records nearest ``vector``,
        best first.

        Distances only: retrieval keeps every chunk in memory, and reading the texts and metadata
        back with each hit (LangChain's ``similarity_search_by_vector_with_relevance_scores``)
        took the two dense queries from 1.7 and 1.1 ms to 4.3 and 2.9 ms (timed alone on a busy
        machine); a warm answer gains 1–3 ms. The query goes to the same Chroma collection.
        """
        collection = self.vectorstore(kind, version)._collection  # the chromadb Collection
        got = collection.query(query_embeddings=[list(vector)], n_results=k, include=["distances"])
        distances = (got["distances"] or [[]])[0]
        return [(i, 1.0 - float(d)) for i, d in zip(got["ids"][0], distances, strict=True)]

    def sentence_chunks(self, version: str) -> dict[str, str]:
        """Each stored sentence's chunk (the first chunk it appears in, as the build stored it).

        Read from the index, not derived from the chunks in memory: a sentence that two
        overlapping chunks share belongs to the one the build met first, which the stored
        metadata records; retrieval then credits the same chunk as the build did.
        """
        got = self.vectorstore("sentences", version).get(include=["metadatas"])
        return {i: str(m["chunk_id"]) for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)}

    def ping(self) -> None:
        """Raise ``IndexUnavailableError`` unless the index answers now (the health check)."""
        try:
            self.client.heartbeat()
        except Exception as exc:
            if isinstance(exc, IndexUnavailableError):
                raise
            where = self.location
            raise IndexUnavailableError(f"the index at {where} does not answer ({exc})") from exc

    def target(self, docs: Iterable[SourceDocument]) -> Manifest:
        return Manifest(
            version="",
            embedding_model=model_fingerprint(self.settings.index.embedding_model),
            chunker=self.chunker_settings().fingerprint(),
            documents={d.doc_id: d.content_hash for d in docs},
            titles={d.doc_id: d.title for d in docs},
            doc2query=doc2query.cache_digest(self.settings),
        )

    def chunker_settings(self) -> ChunkerSettings:
        return ChunkerSettings(
            self.settings.index.chunk_max_chars, self.settings.index.chunk_overlap_sentences
        )

    # -- reading ------------------------------------------------------------------------
    def manifest(self) -> Manifest | None:
        """The active manifest, or None when no complete build exists."""
        try:
            got = self._collection(self._name("meta")).get(ids=[MANIFEST_ID], include=["documents"])
        except IndexUnavailableError:
            raise
        except Exception as exc:
            raise IndexUnavailableError(
                f"the index at {self.location} is unreadable ({exc}); run `ivig-qa index --rebuild`"
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
        if current.doc2query != want.doc2query:
            return "doc2query questions changed"
        if current.documents != want.documents:
            changed = sorted(set(current.documents.items()) ^ set(want.documents.items()))
            return f"documents changed: {', '.join(sorted({k for k, _ in changed}))}"
        return None

    def load_chunks(self, version: str) -> list[Chunk]:
        """All chunks of a version; a missing or unreadable version is ``IndexUnavailableError``."""
        try:
            got = self.client.get_collection(self._name("chunks", version)).get(include=["metadatas"])
            records = zip(got["ids"], got["metadatas"] or [], strict=True)
            chunks = [chunk_from_record(i, m) for i, m in records]
        except IndexUnavailableError:
            raise
        except Exception as exc:
            where = self.location
            raise IndexUnavailableError(
                f"index version {version} at {where} is incomplete or unreadable ({exc}); "
                "run `ivig-qa index --rebuild`"
            ) from exc
        return sorted(chunks, key=lambda c: (c.doc_id, c.start))

    def question_vectors(self, version: str) -> dict[str, np.ndarray]:
        """Each sentence's doc2query question vectors (one row each), read once per version;
        ``{}`` for a version built before questions were indexed."""
        if version not in self._questions:
            try:
                col = self.client.get_collection(self._name("questions", version))
                got = col.get(include=["embeddings", "metadatas"])
            except chromadb.errors.NotFoundError:
                got = {}
            self._questions[version] = doc2query.vectors_by_sentence(got)
        return self._questions[version]

    # -- building -------------------------------------------------------------------------
    def build(self, rebuild: bool = False, progress: Progress | None = None) -> BuildSummary:
        """Bring the index up to date with the corpus folder; atomic and incremental."""
        try:
            summary = self._build(rebuild, progress)
        except Exception as exc:
            if isinstance(exc, IndexUnavailableError) or not is_unavailable(exc):
                raise
            where = self.location
            raise IndexUnavailableError(
                f"the index at {where} stopped answering during the build ({exc}); the previous "
                "version is still active — run `ivig-qa index` again when it is back"
            ) from exc
        return summary

    def _build(self, rebuild: bool, progress: Progress | None) -> BuildSummary:
        started = time.perf_counter()
        damaged = self._set_aside_if_unreadable() if rebuild else None
        report = load_corpus(self.settings.index.corpus_dir)
        if not report.documents:
            raise IndexUnavailableError(
                f"no usable documents in {self.settings.index.corpus_dir}"
                + (f": {'; '.join(report.problems)}" if report.problems else "")
            )
        docs = {d.doc_id: d for d in report.documents}
        want = self.target(report.documents)
        current = self.manifest()
        compatible = (
            not rebuild
            and current is not None
            and current.embedding_model == want.embedding_model
            and current.chunker == want.chunker
            and current.doc2query == want.doc2query
        )
        reuse = (
            [d for d, h in want.documents.items() if current.documents.get(d) == h]
            if compatible and current
            else []
        )
        embed = [d for d in want.documents if d not in reuse]
        removed = sorted(set(current.documents) - set(want.documents)) if current else []

        if current is not None and not rebuild and not embed and not removed:
            self._drop_orphans(keep=current.version)
            if (current.problems, current.warnings) != (report.problems, report.warnings):
                current.problems, current.warnings = report.problems, report.warnings
                self._write_manifest(current)  # same version, what it says about the corpus updated
            return BuildSummary(
                len(docs), current.chunks, current.sentences, [], reuse, [],
                time.perf_counter() - started, False, report.problems, report.warnings,
            )  # fmt: skip

        version = f"v{time.strftime('%Y%m%d%H%M%S')}{uuid.uuid4().hex[:6]}"
        self._drop_orphans(keep=current.version if current else None)
        chunks_col = self._collection(self._name("chunks", version))
        sent_col = self._collection(self._name("sentences", version))
        self._collection(self._name("questions", version))
        if reuse and current:
            self._copy_documents(current.version, version, reuse)
        new_chunks = [c for d in embed for c in chunk_document(docs[d], self.chunker_settings())]
        self._embed_chunks(version, new_chunks, docs, progress)

        want.version = version
        want.chunks = chunks_col.count()
        want.sentences = sent_col.count()
        want.built_at = time.time()
        want.problems, want.warnings = report.problems, report.warnings
        # The switch: one write of the manifest record makes the new version active.
        self._write_manifest(want)
        # Server mode: app servers may still be answering from the replaced version.
        grace = current.version if current and self.settings.index.chroma_url else None
        self._drop_orphans(keep=version, grace=grace)
        if damaged is not None and damaged.exists():
            shutil.rmtree(damaged, ignore_errors=True)
            log.info("removed the damaged index set aside at %s", damaged)
        return BuildSummary(
            len(docs), want.chunks, want.sentences, embed, reuse, removed,
            time.perf_counter() - started, True, report.problems, report.warnings,
        )  # fmt: skip

    def _write_manifest(self, manifest: Manifest) -> None:
        self._collection(self._name("meta")).upsert(
            ids=[MANIFEST_ID], documents=[manifest.to_json()], embeddings=[[0.0, 0.0, 1.0]]
        )

    def _embed_chunks(
        self,
        version: str,
        chunks: list[Chunk],
        docs: dict[str, SourceDocument],
        progress: Progress | None,
    ) -> None:
        """Embed chunks and their sentences, a group at a time, and store them with their vectors.

        Chunk and sentence texts go through one encode call per group of
        ``embedding_group_chunks``, so the model sorts them by length together (less padding
        in its batches) and is called a few times instead of twice per small batch; the
        records are then added with precomputed vectors.
        """
        chunk_col = self._collection(self._name("chunks", version))
        sent_col = self._collection(self._name("sentences", version))
        q_col = self._collection(self._name("questions", version))
        seen: set[str] = set()
        total = len(chunks)
        group = self.settings.index.embedding_group_chunks
        for i in range(0, total, group):
            part = chunks[i : i + group]
            sentences = _new_sentences(part, seen)
            q_ids, q_texts, q_metas = doc2query.question_records(
                (s for s, _ in sentences), doc2query.load_cache(self.settings)
            )
            texts = [c.context_text() for c in part] + [_sentence_text(s, c) for s, c in sentences]
            vectors = self.embeddings.embed_documents(texts + q_texts)
            q_vectors, vectors = vectors[len(texts) :], vectors[: len(texts)]
            if q_ids:
                self._add(q_col, ids=q_ids, embeddings=q_vectors, documents=q_texts, metadatas=q_metas)
            self._add(
                chunk_col,
                ids=[c.chunk_id for c in part],
                embeddings=vectors[: len(part)],
                documents=texts[: len(part)],
                metadatas=[chunk_metadata(c, docs[c.doc_id]) for c in part],
            )
            self._add(
                sent_col,
                ids=[s.sentence_id for s, _ in sentences],
                embeddings=vectors[len(part) :],
                documents=texts[len(part) :],
                metadatas=[
                    {"doc_id": s.doc_id, "start": s.start, "end": s.end, "chunk_id": c.chunk_id}
                    for s, c in sentences
                ],
            )
            done = min(i + group, total)
            log.info("embedded %d/%d chunks", done, total)
            if progress:
                progress(done, total, part[-1].doc_id)

    def _add(self, col: Collection, **records: list[Any]) -> None:
        """Add records in slices the database accepts (Chroma caps the batch size)."""
        ids = records["ids"]
        step = max(1, min(self.client.get_max_batch_size(), 5000))
        for i in range(0, len(ids), step):
            col.add(**{k: v[i : i + step] for k, v in records.items()})

    def _copy_documents(self, old: str, new: str, doc_ids: list[str]) -> None:
        """Carry unchanged documents' records and vectors over without re-embedding."""
        for kind in ("chunks", "sentences", "questions"):
            src = self.client.get_collection(self._name(kind, old))
            dst = self._collection(self._name(kind, new))
            got = src.get(
                where={"doc_id": {"$in": doc_ids}}, include=["embeddings", "documents", "metadatas"]
            )
            if not got["ids"]:
                continue
            self._add(
                dst,
                ids=got["ids"],
                embeddings=got["embeddings"],
                documents=got["documents"],
                metadatas=got["metadatas"],
            )

    def _collection_names(self) -> list[str]:
        return [c if isinstance(c, str) else c.name for c in self.client.list_collections()]

    def _drop_orphans(self, keep: str | None, grace: str | None = None) -> None:
        """Remove collections of versions that are not active (failed or superseded builds).

        ``grace`` is a replaced version kept one build longer (server mode: app servers
        may still be answering from it until they notice the new manifest).
        """
        for name in self._collection_names():
            version = self._owned_version(name)
            if version and version not in (keep, grace):
                self.client.delete_collection(name)
                self._stores = {k: v for k, v in self._stores.items() if k[1] != version}

    def damage(self) -> str | None:
        """Why the index cannot be read at all (``--rebuild`` sets it aside), or None.

        A missing index, or a manifest naming a version whose collections are gone, is not
        damage: the database still works and the rebuild writes a new version into it. A
        server that does not answer is not damage either (``IndexUnavailableError``).
        """
        try:
            current = self.manifest()
            if current is not None:
                for kind in ("chunks", "sentences"):
                    collection = self.client.get_collection(self._name(kind, current.version))
                    collection.get(limit=1, include=["metadatas"])
        except chromadb.errors.NotFoundError:
            return None
        except IndexUnavailableError as exc:
            if self.settings.index.chroma_url and isinstance(exc.__cause__, httpx.TransportError):
                raise
            return str(exc)
        except httpx.TransportError as exc:
            raise IndexUnavailableError(
                f"the Chroma server at {self.location} does not answer ({exc})"
            ) from exc
        except Exception as exc:  # chromadb raises many types for a damaged database
            return f"{type(exc).__name__}: {exc}"
        return None

    def _set_aside_if_unreadable(self) -> Path | None:
        """``--rebuild``: move a damaged index out of the way; a readable one stays and keeps answering.

        Returns the local folder it was moved to (removed once the new index is active).
        """
        why = self.damage()
        if why is None:
            return None
        log.warning("the index at %s cannot be read (%s): setting it aside", self.location, why)
        if self.settings.index.chroma_url:
            self._drop_prefix_on_server()
            return None
        return self._move_local_aside()

    def _drop_prefix_on_server(self) -> None:
        """Drop this prefix's collections on the server, manifest included (never another prefix's)."""
        for name in self._collection_names():
            if self._owned_version(name) is not None:
                self.client.delete_collection(name)
        self._stores.clear()
        log.info(
            "dropped the unreadable %r collections on %s",
            self.settings.index.collection_prefix,
            self.settings.index.chroma_url,
        )

    def _move_local_aside(self) -> Path | None:
        """Rename the damaged folder to ``<index_dir>.damaged-<time>`` so the build starts empty."""
        self._client = None
        self._stores.clear()
        SharedSystemClient.clear_system_cache()  # chromadb caches open databases per path
        path = self.settings.index.index_dir
        if not path.exists():
            return None
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}")
        path.rename(aside)
        log.info("moved the damaged index %s to %s", path, aside)
        return aside
