"""The semantic layer of triage: nearest neighbour over the catalogue's lay descriptions.

Each clause of a message is compared (cosine, the assistant's own embedding model) with every
concept's descriptions and every "not this" neighbour. A concept fires for a clause whose
closest description is similar enough and closer than the closest counter-example, so
phrasings no pattern names are still caught, and general questions about the same symptom
fall to their counter-examples. The catalogue's vectors are computed once, when the layer is
made; a message's clauses are embedded in one batch call.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivig_qa.policy.red_flags import Catalogue, Concept

Encoder = Callable[[list[str]], list[list[float]]]
"""Texts → unit-length vectors (``Embeddings.embed_documents`` of the question encoder)."""

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")
_CLAUSE = re.compile(r",\s+|\s+-+\s+|\s+(?:and|but|so|because|plus|then|also)\s+", re.IGNORECASE)
MIN_CLAUSE_WORDS = 3
MAX_CLAUSES = 12
BATCH = 32  # texts per encoder call when embedding the catalogue


def clauses(text: str) -> list[str]:
    """The sentences of ``text`` and, for those with several parts, the parts (3+ words each).

    A long story dilutes a sentence vector; its clauses each carry one complaint.
    """
    out: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE.split(text)):
        if not sentence:
            continue
        out.append(sentence)
        parts = [p.strip() for p in _CLAUSE.split(sentence) if p and p.strip()]
        if len(parts) > 1:
            out += [p for p in parts if len(p.split()) >= MIN_CLAUSE_WORDS]
    return list(dict.fromkeys(out))[:MAX_CLAUSES]


@dataclass(frozen=True)
class SemanticHit:
    """A concept's best clause: its closest description and closest counter-example."""

    concept: Concept
    clause: str
    similarity: float
    counter: float
    example: str

    @property
    def margin(self) -> float:
        return self.similarity - self.counter


def encode_cached(texts: list[str], encode: Encoder, cache: Path | None = None, key: str = "") -> np.ndarray:
    """Unit vectors of many fixed texts (the catalogue's), read from ``cache`` when made before.

    The file is named by a hash of ``key`` (the model's identity) and the texts, so an edited
    catalogue or another model makes a new one. Texts are encoded in batches of similar length
    (a batch is padded to its longest text). An unwritable cache folder only costs the time.
    """
    digest = hashlib.sha256("\x00".join([key, *texts]).encode()).hexdigest()[:16]
    path = cache.expanduser() / f"vectors-{digest}.npy" if cache is not None else None
    if path is not None and path.is_file():
        try:
            vectors = np.load(path)
            if vectors.shape[0] == len(texts):
                return vectors
        except (OSError, ValueError):
            pass
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        got = unit_rows(encode([texts[i] for i in rows]))
        if not vectors.shape[1]:
            vectors = np.zeros((len(texts), got.shape[1]), dtype=np.float32)
        vectors[rows] = got
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial.npy")
            np.save(partial, vectors)
            partial.replace(path)
        except OSError:
            pass
    return vectors


def unit_rows(rows: list[list[float]]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def same_text(text: str) -> str:
    """A text as the encoder reads it, for telling two texts apart: lower case (the model is
    uncased), spacing collapsed, end punctuation off ("is it normal?" and "is it normal" are one)."""
    return " ".join(text.lower().split()).rstrip("?!.,;: ")


class SemanticLayer:
    """The catalogue's descriptions and counter-examples as vectors, and the scoring.

    A red flag's counter-examples are the red flags' "not this" neighbours and every mild
    description; a mild symptom's are the mild symptoms' "not this" neighbours (mostly red
    flags in other words) and every red-flag description. Texts are
    compared by their core (``Catalogue.core``: context phrases removed) on both sides.
    """

    def __init__(
        self, catalogue: Catalogue, encode: Encoder, cache: Path | None = None, model_key: str = ""
    ) -> None:
        """``cache``/``model_key``: where the catalogue's vectors are kept between processes."""
        self.catalogue = catalogue
        self.encode = encode
        owner: list[int] = []
        pos_texts: list[str] = []
        neg_texts: list[str] = []
        neg_urgent: list[bool] = []
        for i, concept in enumerate(catalogue.concepts):
            if concept.semantic:
                pos_texts += concept.descriptions
                owner += [i] * len(concept.descriptions)
            neg_texts += concept.not_this
            neg_urgent += [concept.urgent] * len(concept.not_this)
        neg_texts += catalogue.not_event
        neg_urgent += [True] * len(catalogue.not_event)
        self.pos_texts = pos_texts
        self.neg_texts = neg_texts
        texts = [self.core(t) for t in pos_texts + neg_texts + list(catalogue.not_body)]
        vectors = (
            encode_cached(texts, encode, cache, model_key) if texts else np.zeros((0, 1), dtype=np.float32)
        )
        self.pos = vectors[: len(pos_texts)]
        self.neg = vectors[len(pos_texts) : len(pos_texts) + len(neg_texts)]
        self.everyday = vectors[len(pos_texts) + len(neg_texts) :]
        self.owner = np.asarray(owner, dtype=np.int64)
        urgent = np.asarray([catalogue.concepts[i].urgent for i in owner], dtype=bool)
        self.red_rows = np.flatnonzero(urgent)
        self.mild_rows = np.flatnonzero(~urgent)
        flags = np.asarray(neg_urgent, dtype=bool)
        self.red_neg_rows = np.flatnonzero(flags)
        self.mild_neg_rows = np.flatnonzero(~flags)
        s = catalogue.semantic
        self.min_similarity = float(s["min_similarity"])
        self.mild_min_similarity = float(s["mild_min_similarity"])
        self.min_margin = float(s["min_margin"])
        self.mild_min_margin = float(s["mild_min_margin"])

    def without(self, concept_id: str) -> SemanticLayer:
        """The layer without one concept's descriptions (leave-one-concept-out), no re-embedding."""
        index = next(i for i, c in enumerate(self.catalogue.concepts) if c.id == concept_id)
        other = self._keeping(np.flatnonzero(self.owner != index))
        other.catalogue = self.catalogue.without(concept_id)
        return other

    def without_description(self, text: str) -> SemanticLayer:
        """The layer without one description (leave-one-out over the catalogue's own examples)."""
        return self._keeping(
            np.asarray([i for i, t in enumerate(self.pos_texts) if t != text], dtype=np.int64)
        )

    def _keeping(self, keep: np.ndarray) -> SemanticLayer:
        other = copy.copy(self)
        other.pos = self.pos[keep]
        other.owner = self.owner[keep]
        other.pos_texts = [self.pos_texts[i] for i in keep]
        urgent = np.asarray([other.catalogue.concepts[i].urgent for i in other.owner], dtype=bool)
        other.red_rows = np.flatnonzero(urgent)
        other.mild_rows = np.flatnonzero(~urgent)
        return other

    def core(self, text: str) -> str:
        """What is compared: the text without context phrases (the whole text if little is left)."""
        core = self.catalogue.core(text.lower())
        return core if len(core.split()) >= 2 else text.lower()

    def embed(self, texts: Sequence[str], known: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Vectors of the texts' cores in one encoder call, reusing ``known`` (text → vector) for a
        core that is the same text (``same_text``: case, spacing and end punctuation aside)."""
        known = {same_text(k): v for k, v in (known or {}).items()}
        cores = [same_text(self.core(t)) for t in texts]
        missing = list(dict.fromkeys(c for c in cores if c not in known))
        fresh = dict(zip(missing, unit_rows(self.encode(missing)), strict=True)) if missing else {}
        if not cores:
            return np.zeros((0, self.pos.shape[1] if len(self.pos) else 1), dtype=np.float32)
        return np.stack([known[c] if c in known else fresh[c] for c in cores])

    def bodily(self, vectors: np.ndarray) -> np.ndarray:
        """Per text: closer to a description of the body than to every everyday thing
        (``[reported] not_body``)."""
        if not len(vectors) or not len(self.pos):
            return np.zeros(len(vectors), dtype=bool)
        if not len(self.everyday):
            return np.ones(len(vectors), dtype=bool)
        return (vectors @ self.pos.T).max(axis=1) > (vectors @ self.everyday.T).max(axis=1)

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per clause × concept: the closest description's similarity, its column, the closest
        counter-example's similarity; and per clause the closest description of any concept."""
        n, k = len(vectors), len(self.catalogue.concepts)
        best = np.full((n, k), -1.0, dtype=np.float32)
        where = np.zeros((n, k), dtype=np.int64)
        against = np.full((n, k), -1.0, dtype=np.float32)
        if not n or not len(self.pos):
            return best, where, against, np.full(n, -1.0, dtype=np.float32)
        sims = vectors @ self.pos.T  # clauses × descriptions
        negs = vectors @ self.neg.T  # clauses × counter-examples

        def rows_max(m: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return m[:, rows].max(axis=1) if len(rows) else np.full(n, -1.0)

        counter = {
            True: np.maximum(rows_max(negs, self.red_neg_rows), rows_max(sims, self.mild_rows)),
            False: np.maximum(rows_max(negs, self.mild_neg_rows), rows_max(sims, self.red_rows)),
        }
        for i, concept in enumerate(self.catalogue.concepts):
            cols = np.flatnonzero(self.owner == i)
            if not len(cols):
                continue
            block = sims[:, cols]
            best[:, i] = block.max(axis=1)
            where[:, i] = cols[block.argmax(axis=1)]
            against[:, i] = counter[concept.urgent]
        return best, where, against, sims.max(axis=1)

    def best(self, parts: Sequence[str], vectors: np.ndarray) -> list[SemanticHit]:
        """Every concept's best clause (the one that fires, else the closest), most similar first."""
        if not len(parts) or not len(self.pos):
            return []
        best, where, against, _ = self.scores(vectors)
        hits: list[SemanticHit] = []
        for i, concept in enumerate(self.catalogue.concepts):
            if not (self.owner == i).any():
                continue
            floor, margin = self.limits(concept)
            ok = (best[:, i] >= floor) & (best[:, i] - against[:, i] >= margin)
            row = int(np.argmax(np.where(ok, best[:, i], best[:, i] - 10.0)))
            hits.append(
                SemanticHit(
                    concept,
                    parts[row],
                    float(best[row, i]),
                    float(against[row, i]),
                    self.pos_texts[where[row, i]],
                )
            )
        return sorted(hits, key=lambda h: -h.similarity)

    def firing(self, parts: Sequence[str], vectors: np.ndarray) -> list[tuple[int, SemanticHit]]:
        """Every (clause index, hit) pair that fires, for every concept."""
        if not len(parts) or not len(self.pos):
            return []
        best, where, against, _ = self.scores(vectors)
        out: list[tuple[int, SemanticHit]] = []
        for i, concept in enumerate(self.catalogue.concepts):
            floor, margin = self.limits(concept)
            for row in np.flatnonzero((best[:, i] >= floor) & (best[:, i] - against[:, i] >= margin)):
                hit = SemanticHit(
                    concept,
                    parts[row],
                    float(best[row, i]),
                    float(against[row, i]),
                    self.pos_texts[where[row, i]],
                )
                out.append((int(row), hit))
        return out

    def limits(self, concept: Concept) -> tuple[float, float]:
        """The similarity floor and the margin over the counter-examples, for the concept's tier."""
        if concept.urgent:
            return self.min_similarity, self.min_margin
        return self.mild_min_similarity, self.mild_min_margin

    def fires(self, hit: SemanticHit) -> bool:
        """Close enough to a description, and close enough to it against the counter-examples."""
        floor, margin = self.limits(hit.concept)
        return hit.similarity >= floor and hit.margin >= margin
