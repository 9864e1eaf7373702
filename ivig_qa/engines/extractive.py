"""The default answer engine: quotes source sentences verbatim, each with its ``[n]``.

Every statement is faithful by construction. Sentences are ranked by how likely they answer
the question (``engines.ranking``); the answer opens with the best one (two when another
source answers too), then adds the few next-best quotes whose calibrated probability of
being quoted reaches a threshold, grouped by source, so a patient reads the answer first and
sees which source says what.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ivig_qa.engines.base import Composition
from ivig_qa.engines.ranking import LEANS_BACK, Ranker, default_ranker, sentence_features
from ivig_qa.retrieval import MIN_CONTENT_TERMS, HybridRetriever, Retrieval, tokenize
from ivig_qa.settings import Settings
from ivig_qa.types import Citation, ScoredPassage, Sentence

# A short label opening a line ("Results: Evidence from…"): context, left out of the quote.
_LEADING_LABEL = re.compile(r"^[A-Z][A-Za-z]*(?: [A-Za-z]+){0,2}: (?=[A-Z0-9\"“(])")


@dataclass
class Candidate:
    """A quotable span: a sentence (with the one before it when it leans on it), and its scores.

    ``score`` is the probability that the sentence answers the question; ``logit`` its log-odds;
    ``similarity`` its dense similarity to the question.
    """

    sentence: Sentence
    quote_start: int
    quote_end: int
    passage: ScoredPassage
    score: float
    terms: frozenset[str]
    similarity: float
    logit: float = 0.0
    source: Mapping[str, str] = field(default_factory=dict)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


class ExtractiveEngine:
    """Selects the best-supported source sentences and stitches them into a cited answer."""

    name = "extractive"
    generates = False

    def __init__(self, retriever: HybridRetriever, settings: Settings, ranker: Ranker | None = None) -> None:
        self.retriever = retriever
        self.settings = settings
        self.ranker = ranker or default_ranker()

    # -- scoring ------------------------------------------------------------------------
    def quotable(self, retrieval: Retrieval) -> list[tuple[Sentence, ScoredPassage, float]]:
        """Each quotable sentence of the retrieved passages once, with its passage and dense similarity."""
        seen: set[str] = set()
        out: list[tuple[Sentence, ScoredPassage, float]] = []
        vectors = retrieval.sentence_vectors
        for passage in retrieval.passages:
            for sentence in passage.chunk.sentences:
                sid = sentence.sentence_id
                if sid in seen or sid not in vectors or len(set(tokenize(sentence.text))) < MIN_CONTENT_TERMS:
                    continue
                seen.add(sid)
                out.append((sentence, passage, float(np.dot(vectors[sid], retrieval.query_vector))))
        return out

    def features(
        self, retrieval: Retrieval
    ) -> tuple[list[tuple[Sentence, ScoredPassage, float]], np.ndarray]:
        """The quotable sentences and their feature rows (``ranking.FEATURES``)."""
        items = self.quotable(retrieval)
        idf = self.retriever.bm25.idf
        d2q = self.d2q_similarities(retrieval, items)
        return items, sentence_features(retrieval.query, retrieval.expanded_query, items, idf, d2q)

    def d2q_similarities(
        self, retrieval: Retrieval, items: list[tuple[Sentence, ScoredPassage, float]]
    ) -> np.ndarray:
        """Each sentence's best cosine to its doc2query questions (precomputed vectors, one matrix
        product); a sentence without questions gets its own dense similarity (the neutral value)."""
        store = getattr(self.retriever, "store", None)
        version = self.retriever.manifest.version if store is not None else ""
        vectors = store.question_vectors(version) if store is not None else {}
        out = np.array([dense for _, _, dense in items], dtype=np.float64)
        have = [i for i, (s, _, _) in enumerate(items) if s.sentence_id in vectors]
        if have:
            rows = [vectors[items[i][0].sentence_id] for i in have]
            sims = np.vstack(rows) @ retrieval.query_vector
            ends = np.cumsum([len(r) for r in rows])
            out[have] = [seg.max() for seg in np.split(sims, ends[:-1])]
        return out

    def candidates(self, question: str, retrieval: Retrieval) -> list[Candidate]:
        """Every quotable sentence of the retrieved passages, most likely answer first."""
        items, x = self.features(retrieval)
        return self.rank(items, self.ranker.logits(x)) if items else []

    def rank(self, items: list[tuple[Sentence, ScoredPassage, float]], logits: np.ndarray) -> list[Candidate]:
        """Candidates for scored sentences, most likely answer first."""
        out = [
            Candidate(
                sentence,
                *self._quote_span(sentence, passage),
                passage,
                float(1.0 / (1.0 + np.exp(-logit))),
                frozenset(tokenize(sentence.text)),
                dense,
                float(logit),
                self.retriever.sources.get(sentence.doc_id, {}),
            )
            for (sentence, passage, dense), logit in zip(items, logits, strict=True)
        ]
        return sorted(out, key=lambda c: -c.logit)

    @staticmethod
    def _quote_span(sentence: Sentence, passage: ScoredPassage) -> tuple[int, int]:
        """The quote for a sentence: it reads on its own, without a label in front.

        Within a paragraph, a sentence that leans on the one before it ("That problem can be
        ameliorated…", "He recommends…") takes that sentence too, and a sentence followed by one
        that leans on it takes the follower (its qualifier: "…increased in dysautonomia. That
        problem can be ameliorated by slower infusions"); a short label opening the quote
        ("Results: ") is context, not part of it.
        """
        sentences = passage.chunk.sentences
        idx = next(i for i, s in enumerate(sentences) if s.start == sentence.start)
        text, offset = passage.chunk.text, passage.chunk.start

        def same_paragraph(a: Sentence, b: Sentence) -> bool:
            return "\n\n" not in text[a.end - offset : b.start - offset]

        start, end = sentence.start, sentence.end
        if idx > 0 and LEANS_BACK.match(sentence.text) and same_paragraph(sentences[idx - 1], sentence):
            start = sentences[idx - 1].start
        if idx + 1 < len(sentences):
            follower = sentences[idx + 1]
            if LEANS_BACK.match(follower.text) and same_paragraph(sentence, follower):
                end = follower.end
        label = _LEADING_LABEL.match(text[start - offset : end - offset])
        return start + (label.end() if label else 0), end

    def select(self, ranked: list[Candidate], limit: int | None = None) -> list[Candidate]:
        """The lead, then every sentence likely enough to be quoted, best first.

        Scores are calibrated probabilities that a careful answer quotes the sentence (relevant
        or supporting; ``Ranker`` is Platt-calibrated on held-out folds), so one threshold means
        the same for every question: a sentence is quoted when its probability reaches
        ``min_quote_probability`` (or, when ``quote_margin`` > 0, it is that close to the lead in
        log-odds). The best sentence of another source joins the lead when it is within
        ``second_lead_margin`` (two sources answering); at most ``max_answer_sentences`` in all,
        no near-duplicates, and no quota per document.
        """
        if not ranked:
            return []
        a = self.settings.answer
        limit = min(limit or a.max_answer_sentences, a.max_answer_sentences)
        best = ranked[0]
        chosen = [best]
        # A second source that answers too: its best sentence, when within second_lead_margin.
        other = next((c for c in ranked if c.sentence.doc_id != best.sentence.doc_id), None)
        if other is not None and limit > 1 and best.logit - other.logit <= a.second_lead_margin:
            chosen.append(other)
        for cand in ranked[1:]:
            if len(chosen) >= limit:
                break
            if not self.passes(best, cand):
                break
            if cand in chosen or any(self._overlaps(cand, c) for c in chosen):
                continue
            chosen.append(cand)
        return sorted(chosen, key=lambda c: -c.logit)

    def passes(self, lead: Candidate, cand: Candidate) -> bool:
        """Likely enough to quote beside this lead (``select``'s rule for one candidate)."""
        a = self.settings.answer
        close = a.quote_margin > 0 and lead.logit - cand.logit <= a.quote_margin
        return close or cand.score >= a.min_quote_probability

    def _overlaps(self, cand: Candidate, other: Candidate) -> bool:
        """Same text (overlapping quotes) or nearly the same words."""
        same_doc = cand.sentence.doc_id == other.sentence.doc_id
        if same_doc and cand.quote_start < other.quote_end and other.quote_start < cand.quote_end:
            return True
        return _jaccard(cand.terms, other.terms) > self.settings.answer.duplicate_overlap

    def leads(self, chosen: list[Candidate]) -> list[Candidate]:
        """The lead, and a second source's best quote when it is within ``second_lead_margin``."""
        if not chosen:
            return []
        best = chosen[0]
        second = next((c for c in chosen[1:] if c.sentence.doc_id != best.sentence.doc_id), None)
        if second is not None and best.logit - second.logit <= self.settings.answer.second_lead_margin:
            return [best, second]
        return [best]

    # -- composing ------------------------------------------------------------------------
    def compose(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Composition:
        return self.compose_chosen(self.select(self.candidates(question, retrieval), limit))

    def compose_chosen(self, chosen: list[Candidate]) -> Composition:
        """The answer from already selected candidates: the lead(s) first, the rest by source."""
        return compose_quotes(chosen, self.name, len(self.leads(chosen)))

    def stream_compose(
        self, question: str, retrieval: Retrieval, limit: int | None = None, quotes_only: bool = False
    ) -> Iterator[str | Composition]:
        """Quotes are ready at once: their lines, then the composition (always quotes only)."""
        composition = self.compose(question, retrieval, limit)
        yield from composition.text.splitlines(keepends=True)
        yield composition


def _merge_spans(cands: list[Candidate]) -> list[tuple[int, int, Candidate]]:
    """Within a document, join overlapping or touching quotes into one span, source order."""
    spans = sorted(((c.quote_start, c.quote_end, c) for c in cands), key=lambda t: t[0])
    merged: list[tuple[int, int, Candidate]] = []
    for start, end, cand in spans:
        if merged and start <= merged[-1][1] + 2 and merged[-1][2].passage is cand.passage:
            prev = merged[-1]
            best = prev[2] if prev[2].score >= cand.score else cand
            merged[-1] = (prev[0], max(prev[1], end), best)
        else:
            merged.append((start, end, cand))
    return merged


def citation(n: int, start: int, end: int, cand: Candidate) -> Citation:
    """Citation ``[n]``: the quote ``[start, end)`` of the candidate's passage, with its source."""
    chunk = cand.passage.chunk
    return Citation(
        n=n,
        doc_id=chunk.doc_id,
        title=chunk.title,
        chunk_id=chunk.chunk_id,
        text=chunk.text,
        quote=chunk.text[start - chunk.start : end - chunk.start],
        start=start,
        end=end,
        score=round(cand.score, 4),
        publisher=cand.source.get("publisher"),
        kind=cand.source.get("kind"),
        page=chunk.page_at(start),
    )


def compose_quotes(chosen: list[Candidate], engine: str, leads: int = 0) -> Composition:
    """The first ``leads`` quotes on their own (the answer), then the rest grouped by document
    (in order of their best quote) under the document's title; citations numbered in reading order.

    A quote that touches a lead in its passage joins the lead (one quote reads better than two).
    """
    if not chosen:
        return Composition("", [], engine)
    head, rest = chosen[:leads], chosen[leads:]
    lines: list[str] = []
    citations: list[Citation] = []

    def add(group: list[Candidate]) -> None:
        for start, end, cand in _merge_spans(group):
            citations.append(citation(len(citations) + 1, start, end, cand))
            lines.append(f"- {' '.join(citations[-1].quote.split())} [{len(citations)}]")

    for lead in head:
        touching = [c for c in rest if c.passage is lead.passage and _touches(c, lead)]
        rest = [c for c in rest if c not in touching]
        add([lead, *touching])
    for doc_id in dict.fromkeys(c.sentence.doc_id for c in rest):
        group = [c for c in rest if c.sentence.doc_id == doc_id]
        if lines:
            lines.append("")
        lines.append(f"**{group[0].passage.chunk.title}**")
        add(group)
    return Composition("\n".join(lines), citations, engine)


def _touches(a: Candidate, b: Candidate) -> bool:
    return a.quote_start <= b.quote_end + 2 and b.quote_start <= a.quote_end + 2
