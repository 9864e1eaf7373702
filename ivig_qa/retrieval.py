"""Stage 4: hybrid retrieval — dense chunks + dense sentences + BM25, fused by RRF.

All-MiniLM alone misses many paraphrased patient questions, so three rankings vote:
chunks embedded with their title and heading, single sentences (a finer granularity that
matches short questions better), and BM25 over the chunk text for exact terms (brands,
numbers, disease names). The question is first expanded with the sources' words for
common lay terms ("drip" → infusion, "nursing" → breast-feeding).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr
from rank_bm25 import BM25Okapi

from ivig_qa import data
from ivig_qa.index import IndexStore, Manifest
from ivig_qa.settings import Settings
from ivig_qa.text import STOPWORDS, TOKEN, english, stem, tokenize
from ivig_qa.types import Chunk, ScoredPassage


def _builtin_lay_terms() -> dict[str, str]:
    return data.load("lay_terms.toml")["expansions"]


def _chat_rewrites() -> dict[str, str]:
    return data.load("lay_terms.toml").get("rewrite", {})


@cache
def lay_words() -> frozenset[str]:
    """Every word of the lay vocabulary (these are known words, not unknown subjects)."""
    keys = [*_builtin_lay_terms(), *_chat_rewrites()]
    return frozenset(w for key in keys for w in TOKEN.findall(key.lower()))


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9']*")


@lru_cache(maxsize=4096)
def _english_correction(word: str) -> str | None:
    """English's own correction of a misspelling (a dictionary edit search: ~2 ms, so budgeted)."""
    return english().correction(word)


def is_english(word: str) -> bool:
    """A common English word (as often as the scope check counts as common): never a typo."""
    return english().word_frequency[word] >= data.load("triage.toml")["scope"]["common_word_min_count"]


class Vocabulary:
    """The corpus's words, for typo correction and for telling known subjects from unknown.

    Typo lookups cost the same whatever the size of the corpus: every source word is indexed
    under its spellings with up to two letters dropped (a SymSpell deletion index), so a
    misspelling is compared only with the few words it shares such a spelling with, using
    the same similarity (difflib's ratio ≥ 0.8, same first letter) as a scan of all words.
    Results are cached per word, and one text triggers at most ``LOOKUPS_PER_TEXT`` lookups,
    so the cost of normalising a message is bounded by its length.
    """

    MAX_TYPO_DELETES = 2  # a typo and the word it meant share a spelling with ≤ 2 letters dropped each
    MAX_CORRECTED_CHARS = 24  # longer words are never corrected (no source word is half as long again)
    LOOKUPS_PER_TEXT = 24  # unknown words looked up per normalised text; the rest stay as typed
    ENGLISH_LOOKUPS_PER_TEXT = 3  # of which asked of the English dictionary too (the costly search)
    CACHED_WORDS = 8192

    @classmethod
    def deletions(cls, word: str) -> set[str]:
        """The word and every spelling of it with up to ``MAX_TYPO_DELETES`` letters dropped."""
        found, edge = {word}, {word}
        for _ in range(cls.MAX_TYPO_DELETES):
            edge = {w[:i] + w[i + 1 :] for w in edge for i in range(len(w))} - found
            found |= edge
        return found

    def __init__(self, texts: list[str]) -> None:
        words: set[str] = set()
        for text in texts:
            for word in re.findall(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]", text.lower()):
                for part in re.split(r"[-']", word):
                    if part:
                        words.update((part, stem(part)))
                words.add(word)
        self.words = frozenset(words)
        self.longest = max((len(w) for w in self.words), default=0)
        self._by_deletion: dict[str, list[str]] = defaultdict(list)
        for word in self.words:
            if len(word) >= 4:  # shorter words are never within the similarity of a 5+ letter word
                for spelling in self.deletions(word):
                    self._by_deletion[spelling].append(word)
        self._closest = lru_cache(maxsize=self.CACHED_WORDS)(self._lookup)

    def __contains__(self, word: str) -> bool:
        return word in self.words or stem(word) in self.words

    def closest(self, word: str) -> str | None:
        """The corpus word a (5+ letter) misspelling most likely meant, if any."""
        if not 5 <= len(word) <= self.MAX_CORRECTED_CHARS:
            return None
        return self._closest(word)

    def _lookup(self, word: str) -> str | None:
        candidates = {
            w
            for spelling in self.deletions(word)
            for w in self._by_deletion.get(spelling, ())
            if w[0] == word[0]
        }
        found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.8)
        return found[0] if found else None

    def has_prefix_of(self, word: str, min_len: int = 5) -> bool:
        """An inflection of a corpus word ("trialled" for "trial", "infusing" for "infus…")."""
        return any(word[:n] in self.words for n in range(min_len, min(len(word), self.longest + 1)))

    def normalise(self, question: str) -> str:
        """Rewrite chat shorthand and fix misspellings of the sources' own words.

        A common English word is never a misspelling ("heard" stays, not "heart"; "cheaper" is
        not "chapter"); a misspelling whose English correction is a sources' word, or one with
        a short ending ("severly" → "severely", after "severe"), takes that correction.

        At most ``LOOKUPS_PER_TEXT`` unknown words are looked up, the last ones first (a long
        message asks its question at the end); a text longer than any question keeps the
        rest as typed.
        """
        rewrites = _chat_rewrites()
        pieces: list[str] = []
        lookups, end = 0, len(question)
        for m in reversed(list(_WORD.finditer(question))):
            word = m.group()
            low = word.lower()
            if low in rewrites:
                fixed = rewrites[low]
            elif (
                lookups >= self.LOOKUPS_PER_TEXT
                or not 5 <= len(low) <= self.MAX_CORRECTED_CHARS  # cheapest first: never corrected
                or low in STOPWORDS
                or low in self
                or low in lay_words()
                or is_english(low)
            ):
                continue
            else:
                lookups += 1
                english = _english_correction(low) if lookups <= self.ENGLISH_LOOKUPS_PER_TEXT else None
                if english and english != low and (english in self or english[:-2] in self.words):
                    fixed = english
                else:
                    fixed = self.closest(low) or word
            pieces += [question[m.end() : end], fixed]
            end = m.start()
        pieces.append(question[:end])
        return "".join(reversed(pieces))


class QueryExpander:
    """Appends the sources' vocabulary for lay words found in the question."""

    def __init__(self, extra_file: Path | None = None) -> None:
        terms = dict(_builtin_lay_terms())
        if extra_file:
            terms.update(tomllib.loads(extra_file.read_text("utf-8")).get("expansions", {}))
        self._patterns = [
            (re.compile(rf"(?<![a-z0-9]){re.escape(k.lower())}(?![a-z0-9])"), v) for k, v in terms.items()
        ]

    def expand(self, question: str) -> str:
        low = question.lower()
        extra = [v for pat, v in self._patterns if pat.search(low)]
        return question if not extra else f"{question} ({' '.join(dict.fromkeys(extra))})"


MIN_CONTENT_TERMS = 2  # a sentence with fewer content words is not quotable on its own


@dataclass
class Retrieval:
    """The passages for one question, plus what composing the answer reuses.

    ``sentence_vectors`` are the stored vectors of every sentence in the passages;
    ``best_similarity`` is the closest quotable sentence's similarity to the question, which
    the policy reads (before any composing) to tell whether the sources are near the question.
    """

    query: str
    expanded_query: str
    query_vector: np.ndarray
    passages: list[ScoredPassage]
    sentence_vectors: dict[str, np.ndarray]
    best_similarity: float


def _source_metadata(records: Sequence[Mapping[str, object]]) -> dict[str, dict[str, str]]:
    """Each document's publisher and kind (``corpus/sources.toml``), as the index stored them."""
    out: dict[str, dict[str, str]] = {}
    for meta in records:
        fields = {k: str(meta[k]) for k in ("publisher", "kind") if meta.get(k)}
        out.setdefault(str(meta["doc_id"]), {}).update(fields)
    return out


def rrf(rankings: list[list[str]], k: int, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted reciprocal rank fusion (Cormack et al., 2009): robust to incomparable scores."""
    fused: dict[str, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, key in enumerate(ranking):
            fused[key] += weight / (k + rank + 1)
    return fused


class HybridRetriever(BaseRetriever):
    """A LangChain retriever over the active index version."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: IndexStore
    settings: Settings
    manifest: Manifest
    chunks: dict[str, Chunk]
    bm25: BM25Okapi
    bm25_ids: list[str]
    expander: QueryExpander
    vocabulary: Vocabulary
    sources: dict[str, dict[str, str]]
    sentence_chunks: dict[str, str]
    """Each indexed sentence's chunk id, so a sentence hit needs nothing but its id."""
    _sentence_vectors: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    @classmethod
    def open(cls, store: IndexStore, manifest: Manifest) -> HybridRetriever:
        chunks = store.load_chunks(manifest.version)
        records = store.vectorstore("chunks", manifest.version).get(include=["metadatas"])
        ids = [c.chunk_id for c in chunks]
        corpus_tokens = [tokenize(c.context_text()) for c in chunks]
        return cls(
            store=store,
            settings=store.settings,
            manifest=manifest,
            chunks={c.chunk_id: c for c in chunks},
            bm25=BM25Okapi(corpus_tokens),
            bm25_ids=ids,
            expander=QueryExpander(store.settings.retrieval.lay_terms_file),
            vocabulary=Vocabulary([c.context_text() for c in chunks]),
            sources=_source_metadata(records.get("metadatas") or []),
            sentence_chunks=store.sentence_chunks(manifest.version),
        )

    # -- the three rankings --------------------------------------------------------------
    def _dense_chunks(self, vector: list[float]) -> tuple[list[str], dict[str, float]]:
        hits = self.store.nearest("chunks", self.manifest.version, vector, self.settings.retrieval.k_dense)
        return [i for i, _ in hits], dict(hits)

    def _dense_sentences(self, vector: list[float]) -> dict[str, float]:
        """Each chunk's best sentence similarity, in rank order."""
        k = self.settings.retrieval.k_sentences
        best_in_chunk: dict[str, float] = {}
        for sentence_id, similarity in self.store.nearest("sentences", self.manifest.version, vector, k):
            chunk_id = self.sentence_chunks.get(sentence_id)
            if chunk_id is not None:
                best_in_chunk.setdefault(chunk_id, similarity)
        return best_in_chunk

    def _lexical(self, query: str) -> list[str]:
        tokens = tokenize(query)
        if not tokens:
            return []
        scores = self.bm25.get_scores(tokens)
        order = np.argsort(-scores)[: self.settings.retrieval.k_bm25]
        return [self.bm25_ids[i] for i in order if scores[i] > 0]

    # -- public -------------------------------------------------------------------------
    def retrieve(self, question: str) -> Retrieval:
        expanded = self.expander.expand(question)
        vector = self.store.embeddings.embed_query(expanded)
        dense_ids, chunk_sims = self._dense_chunks(vector)
        best_sentence = self._dense_sentences(vector)
        lexical_ids = self._lexical(expanded)
        fused = rrf(
            [dense_ids, list(best_sentence), lexical_ids],
            self.settings.retrieval.rrf_k,
            self.settings.retrieval.rrf_weights,
        )
        top = sorted(fused.items(), key=lambda kv: -kv[1])[: self.settings.retrieval.k_final]
        passages = [
            ScoredPassage(
                chunk=self.chunks[cid],
                score=score,
                similarity=max(chunk_sims.get(cid, 0.0), best_sentence.get(cid, 0.0)),
                rank=rank,
            )
            for rank, (cid, score) in enumerate(top)
            if cid in self.chunks
        ]
        query_vector = np.asarray(vector, dtype=np.float32)
        sentences = {s.sentence_id: s for p in passages for s in p.chunk.sentences}
        vectors = self.sentence_vectors(list(sentences))
        best = max(
            (
                float(np.dot(vectors[sid], query_vector))
                for sid, s in sentences.items()
                if sid in vectors and len(set(tokenize(s.text))) >= MIN_CONTENT_TERMS
            ),
            default=0.0,
        )
        return Retrieval(question, expanded, query_vector, passages, vectors, best)

    def term_weight(self, term: str) -> float:
        """How specific a (tokenized) term is in this corpus: its BM25 IDF, 0 if unseen."""
        return max(float(self.bm25.idf.get(term, 0.0)), 0.0)

    def sentence_vectors(self, sentence_ids: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the given sentences (the compose step scores them all)."""
        missing = [i for i in sentence_ids if i not in self._sentence_vectors]
        if missing:  # an index version never changes: each vector is read from Chroma once
            store = self.store.vectorstore("sentences", self.manifest.version)  # opened once, reused
            got = store.get(ids=missing, include=["embeddings"])
            for i, e in zip(got["ids"], got["embeddings"], strict=True):
                self._sentence_vectors[i] = np.asarray(e, dtype=np.float32)
        return {i: self._sentence_vectors[i] for i in sentence_ids if i in self._sentence_vectors}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        """``retriever.invoke(query)``: the fused passages as Documents, best first."""
        return as_documents(self.retrieve(query).passages)


def as_documents(passages: Sequence[ScoredPassage]) -> list[Document]:
    """Passages as LangChain Documents: the chunk text, its id, source location and scores."""
    return [
        Document(
            page_content=p.chunk.text,
            id=p.chunk.chunk_id,
            metadata={
                "chunk_id": p.chunk.chunk_id,
                "doc_id": p.chunk.doc_id,
                "title": p.chunk.title,
                "heading": p.chunk.heading,
                "start": p.chunk.start,
                "end": p.chunk.end,
                "rank": p.rank,
                "score": p.score,
                "similarity": p.similarity,
            },
        )
        for p in passages
    ]
