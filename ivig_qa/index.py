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

On a Chroma server several app servers read the index while an indexer job writes it, so
a build there keeps the version it replaced until the next build (the app servers switch
to the new one within ``chroma_poll_s``), requests time out after ``chroma_timeout_s``
instead of hanging on a dead server, and ``--rebuild`` drops this prefix's collections on
the server (never another prefix's).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import chromadb
import chromadb.errors
import httpx
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings

from ivig_qa.chunking import ChunkerSettings, chunk_document
from ivig_qa.corpus import load_corpus
from ivig_qa.embeddings import StoreEmbeddings, TunedEmbeddings, model_fingerprint
from ivig_qa.settings import Settings
from ivig_qa.types import Chunk, Sentence, SourceDocument

log = logging.getLogger(__name__)

MANIFEST_ID = "manifest"
Progress = Callable[[int, int, str], None]
_VERSION = r"v\d{14}[0-9a-f]{6}"


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
    for key in ("publisher", "url", "kind"):
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
        # Given embeddings (tests, the bench) do both jobs; by default questions and documents
        # each get their own encoder (see ``StoreEmbeddings``).
        self.embeddings: Embeddings = (
            StoreEmbeddings(settings)
            if embeddings is None
            else TunedEmbeddings(embeddings, settings.index.query_threads, settings.index.build_threads)
        )
        self._client: ClientAPI | None = None
        self._stores: dict[tuple[str, str], Chroma] = {}

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
        m = re.fullmatch(rf"{prefix}_(?:chunks|sentences)_({_VERSION})", name)
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
        if rebuild and self.settings.index.chroma_url:
            self._wipe_server()
        elif rebuild:
            self._wipe_local()
        report = load_corpus(self.settings.index.corpus_dir)
        if not report.documents:
            raise IndexUnavailableError(
                f"no usable documents in {self.settings.index.corpus_dir}"
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
        # Server mode: app servers may still be answering from the replaced version.
        grace = current.version if current and self.settings.index.chroma_url else None
        self._drop_orphans(keep=version, grace=grace)
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
        """Embed chunks and their sentences, a group at a time, and store them with their vectors.

        Chunk and sentence texts go through one encode call per group of
        ``embedding_group_chunks``, so the model sorts them by length together (less padding
        in its batches) and is called a few times instead of twice per small batch; the
        records are then added with precomputed vectors.
        """
        chunk_col = self._collection(self._name("chunks", version))
        sent_col = self._collection(self._name("sentences", version))
        seen: set[str] = set()
        total = len(chunks)
        group = self.settings.index.embedding_group_chunks
        for i in range(0, total, group):
            part = chunks[i : i + group]
            sentences = _new_sentences(part, seen)
            texts = [c.context_text() for c in part] + [_sentence_text(s, c) for s, c in sentences]
            vectors = self.embeddings.embed_documents(texts)
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
        step = max(1, min(self._max_batch(), 5000))
        for i in range(0, len(ids), step):
            col.add(**{k: v[i : i + step] for k, v in records.items()})

    def _max_batch(self) -> int:
        try:
            return int(self.client.get_max_batch_size()) or 1000
        except Exception:  # older servers do not say
            return 1000

    def _copy_documents(self, old: str, new: str, doc_ids: list[str]) -> None:
        """Carry unchanged documents' records and vectors over without re-embedding."""
        for kind in ("chunks", "sentences"):
            src = self.client.get_collection(self._name(kind, old))
            dst = self._collection(self._name(kind, new))
            got = src.get(
                where={"doc_id": {"$in": doc_ids}}, include=["embeddings", "documents", "metadatas"]
            )
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

    def _wipe_server(self) -> None:
        """``--rebuild`` on a Chroma server: drop this prefix's collections, manifest included."""
        for name in self._collection_names():
            if self._owned_version(name) is not None:
                self.client.delete_collection(name)
        self._stores.clear()
        log.info(
            "dropped the %r collections on %s for a clean rebuild",
            self.settings.index.collection_prefix,
            self.settings.index.chroma_url,
        )

    def _wipe_local(self) -> None:
        """``--rebuild``: start from an empty folder, whatever state the old one is in."""
        self._client = None
        self._stores.clear()
        SharedSystemClient.clear_system_cache()  # chromadb caches open databases per path
        path = self.settings.index.index_dir
        if path.exists():
            shutil.rmtree(path)
        log.info("removed %s for a clean rebuild", path)


def _new_sentences(chunks: list[Chunk], seen: set[str]) -> list[tuple[Sentence, Chunk]]:
    """Each sentence once, with the first chunk it appears in (overlapping chunks share some)."""
    out: list[tuple[Sentence, Chunk]] = []
    for chunk in chunks:
        for sentence in chunk.sentences:
            if sentence.sentence_id not in seen:
                seen.add(sentence.sentence_id)
                out.append((sentence, chunk))
    return out


def embedding_texts(chunks: list[Chunk]) -> list[str]:
    """Exactly the texts a build embeds for these chunks (chunks, then their sentences).

    The benchmark encodes these with the bare model to show the build's overhead.
    """
    sentences = _new_sentences(chunks, set())
    return [c.context_text() for c in chunks] + [_sentence_text(s, c) for s, c in sentences]
