"""The default answer engine: quotes source sentences verbatim, each with its ``[n]``.

Every statement is faithful by construction; quotes are grouped by source so a patient can
see which source says what.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from ivig_qa import data
from ivig_qa.engines.base import Composition
from ivig_qa.retrieval import MIN_CONTENT_TERMS, HybridRetriever, Retrieval, tokenize
from ivig_qa.settings import Settings
from ivig_qa.types import Citation, ScoredPassage, Sentence

# A sentence opening with one of these leans on the one before it; quote both.
_ANAPHORIC = re.compile(
    r"^(it|this|that|these|those|they|he|she|his|her|their|such|however|but|also|then|"
    r"may|furthermore|nevertheless|both|some)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AnswerType:
    """A kind of fact a question asks for, and how a sentence that states it looks."""

    name: str
    question: re.Pattern[str]
    sentence: re.Pattern[str]


@cache
def answer_types() -> tuple[AnswerType, ...]:
    raw = data.load("answer_types.toml")
    return tuple(
        AnswerType(
            t["name"], re.compile(t["question"], re.IGNORECASE), re.compile(t["sentence"], re.IGNORECASE)
        )
        for t in raw["type"]
    )


def asked_types(question: str) -> list[AnswerType]:
    return [t for t in answer_types() if t.question.search(question)]


@dataclass
class Candidate:
    """A quotable span: a sentence, widened to its neighbours when one leans on the other."""

    sentence: Sentence
    quote_start: int
    quote_end: int
    passage: ScoredPassage
    score: float
    terms: frozenset[str]
    similarity: float


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


class ExtractiveEngine:
    """Selects the best-supported source sentences and stitches them into a cited answer."""

    name = "extractive"
    generates = False

    def __init__(self, retriever: HybridRetriever, settings: Settings) -> None:
        self.retriever = retriever
        self.settings = settings

    # -- scoring ------------------------------------------------------------------------
    def candidates(self, question: str, retrieval: Retrieval) -> list[Candidate]:
        """Every sentence of the retrieved passages, scored against the question."""
        owner: dict[str, tuple[Sentence, ScoredPassage]] = {}
        for passage in retrieval.passages:
            for sentence in passage.chunk.sentences:
                owner.setdefault(sentence.sentence_id, (sentence, passage))
        vectors = retrieval.sentence_vectors
        idf = self.retriever.bm25.idf
        wanted_types = asked_types(retrieval.query)
        asked = set(tokenize(retrieval.query))
        expansion = set(tokenize(retrieval.expanded_query)) - asked

        def coverage(terms: frozenset[str], wanted: set[str]) -> float:
            """IDF-weighted share of ``wanted`` found in ``terms``."""
            total = sum(max(idf.get(t, 0.0), 0.0) for t in wanted)
            return sum(max(idf.get(t, 0.0), 0.0) for t in wanted & terms) / total if total else 0.0

        out: list[Candidate] = []
        for sid, (sentence, passage) in owner.items():
            terms = frozenset(tokenize(sentence.text))
            if len(terms) < MIN_CONTENT_TERMS or sid not in vectors:
                continue
            dense = float(np.dot(vectors[sid], retrieval.query_vector))
            # The user's own words count fully; the lay-term expansions are a hint.
            lexical = coverage(terms, asked) + 0.5 * coverage(terms, expansion)
            typed = any(t.sentence.search(sentence.text) for t in wanted_types)
            prior = 1.0 / (1.0 + passage.rank)
            score = (
                dense
                + self.settings.answer.sentence_lexical_weight * lexical
                + self.settings.answer.sentence_rank_weight * prior
                + self.settings.answer.answer_type_weight * typed
            )
            out.append(
                Candidate(sentence, *self._quote_span(sentence, passage), passage, score, terms, dense)
            )
        return sorted(out, key=lambda c: -c.score)

    @staticmethod
    def _quote_span(sentence: Sentence, passage: ScoredPassage) -> tuple[int, int]:
        """Widen the quote so it reads on its own.

        A sentence opening with "It", "However"… takes the sentence before it; a sentence
        followed (in the same paragraph) by one that opens that way takes that one too
        ("…increased in dysautonomia. That problem can be ameliorated by…").
        """
        sentences = passage.chunk.sentences
        idx = next(i for i, s in enumerate(sentences) if s.start == sentence.start)
        text, offset = passage.chunk.text, passage.chunk.start

        def same_paragraph(a: Sentence, b: Sentence) -> bool:
            return "\n\n" not in text[a.end - offset : b.start - offset]

        start, end = sentence.start, sentence.end
        if idx > 0 and _ANAPHORIC.match(sentence.text) and same_paragraph(sentences[idx - 1], sentence):
            start = sentences[idx - 1].start
        if idx + 1 < len(sentences):
            following = sentences[idx + 1]
            if _ANAPHORIC.match(following.text) and same_paragraph(sentence, following):
                end = following.end
        return start, end

    def select(self, ranked: list[Candidate], limit: int | None = None) -> list[Candidate]:
        """Greedy pick: strong enough, not a near-duplicate, spread across documents.

        The first pass takes each document's best sentence (so sources that agree or differ
        are both heard), the second fills up with the next best overall.
        """
        if not ranked:
            return []
        s = self.settings
        limit = min(limit or s.answer.max_answer_sentences, s.answer.max_answer_sentences)
        floor = max(s.answer.min_sentence_score, ranked[0].score * s.answer.relative_sentence_score)
        eligible = [c for c in ranked if c.score >= floor]
        best_per_doc = list({c.sentence.doc_id: c for c in reversed(eligible)}.values())
        best_per_doc.sort(key=lambda c: -c.score)
        chosen: list[Candidate] = []
        per_doc: dict[str, int] = {}
        for cand in [*best_per_doc, *eligible]:
            if len(chosen) >= limit:
                break
            doc = cand.sentence.doc_id
            if cand in chosen or per_doc.get(doc, 0) >= s.answer.max_sentences_per_doc:
                continue
            if any(_jaccard(cand.terms, c.terms) > s.answer.duplicate_overlap for c in chosen):
                continue
            chosen.append(cand)
            per_doc[doc] = per_doc.get(doc, 0) + 1
        return sorted(chosen, key=lambda c: -c.score)

    # -- composing ------------------------------------------------------------------------
    def compose(self, question: str, retrieval: Retrieval, limit: int | None = None) -> Composition:
        return compose_quotes(self.select(self.candidates(question, retrieval), limit), self.name)

    def stream_compose(
        self, question: str, retrieval: Retrieval, limit: int | None = None
    ) -> Iterator[str | Composition]:
        """Quotes are ready at once: their lines, then the composition."""
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


def compose_quotes(chosen: list[Candidate], engine: str) -> Composition:
    """Group quotes by document (best document first) and number the citations."""
    if not chosen:
        return Composition("", [], engine)
    doc_order = list(dict.fromkeys(c.sentence.doc_id for c in chosen))
    lines: list[str] = []
    citations: list[Citation] = []
    for doc_id in doc_order:
        group = [c for c in chosen if c.sentence.doc_id == doc_id]
        chunk = group[0].passage.chunk
        if lines:
            lines.append("")
        lines.append(f"**{chunk.title}**")
        for start, end, cand in _merge_spans(group):
            passage = cand.passage.chunk
            quote = passage.text[start - passage.start : end - passage.start]
            n = len(citations) + 1
            citations.append(
                Citation(
                    n=n,
                    doc_id=doc_id,
                    title=passage.title,
                    chunk_id=passage.chunk_id,
                    text=passage.text,
                    quote=quote,
                    start=start,
                    end=end,
                    score=round(cand.score, 4),
                    page=passage.page_at(start),
                )
            )
            lines.append(f"- {' '.join(quote.split())} [{n}]")
    return Composition("\n".join(lines), citations, engine)
