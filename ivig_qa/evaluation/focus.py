"""Focus of an answer: are its quotes the ones that answer, does it lead with the answer, is it short.

Measured against a set's hand labels, by location like evidence recall: ``relevant`` sentences
answer the question, ``supporting`` ones are qualifiers a patient would want beside them.

* quote precision: the share of quoted sentences that are labelled (a quote joining several
  source sentences counts each of them). A quoted sentence is labelled when half of it lies in
  labelled sentences, or when it holds half of one label (labels may be parts of a sentence);
* lead: the answer's first quote (the citation of its first marker) holds a ``relevant`` sentence;
* answer words: words of the answer text as shown (markers and markdown left out; a sources
  list, which the UI adds, is not part of it);
* context quoted: quotes that overlap a heading or label line of their source (see
  ``corpus.context_spans``), which are context and must never be quoted as statements.

Evidence recall alone rewards quoting more; these measure what is quoted needlessly.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ivig_qa.chunking import split_sentences
from ivig_qa.evaluation.checks import covered_chars
from ivig_qa.evaluation.dataset import EvalItem, Evidence, TextRange
from ivig_qa.text import markers
from ivig_qa.types import Citation

_MARKER = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_WORD = re.compile(r"\w")


class FocusRecord(BaseModel):
    """Focus of one answer (``None`` where the item has no labels or the answer no quotes)."""

    quoted_sentences: int
    labelled_sentences: int
    quote_precision: float | None
    lead_relevant: bool | None
    answer_words: int
    context_quoted: list[int] = Field(description="Citation numbers whose quote overlaps a heading/label.")


def answer_words(text: str) -> int:
    """Words of the answer as shown: ``[n]`` markers, ``**`` and bullets are not words."""
    return sum(1 for token in _MARKER.sub(" ", text).replace("**", " ").split() if _WORD.search(token))


def quoted_sentences(citation: Citation, source: str | None) -> list[TextRange]:
    """The source sentences a quote spans (a list line without a full stop is one sentence)."""
    if source is None or source[citation.start : citation.end] != citation.quote:
        return [TextRange(citation.doc_id, citation.start, citation.end)]
    out: list[TextRange] = []
    for m in re.finditer(r"[^\n]+", source[citation.start : citation.end]):
        a, b = citation.start + m.start(), citation.start + m.end()
        out += [TextRange(citation.doc_id, x, y) for x, y in split_sentences(source, a, b)]
    return out


def _spans(labels: Iterable[Evidence]) -> list[TextRange]:
    return [span for label in labels for span in label.spans]


def is_labelled(span: TextRange, labels: Sequence[TextRange]) -> bool:
    """Half of ``span`` lies in labelled text, or ``span`` holds half of one label."""
    if covered_chars(span, labels) * 2 >= span.end - span.start:
        return True
    return any(span.overlap(label) * 2 >= label.end - label.start for label in labels)


def score_focus(
    loaded: EvalItem,
    text: str,
    citations: Sequence[Citation],
    documents: Mapping[str, str],
    contexts: Mapping[str, Sequence[TextRange]],
) -> FocusRecord:
    """Quote precision, lead, length and context quotes of one answer (its text and citations)."""
    relevant = _spans(loaded.relevant)
    labelled = relevant + _spans(loaded.supporting)
    sentences = [s for c in citations for s in quoted_sentences(c, documents.get(c.doc_id))]
    on_topic = sum(is_labelled(s, labelled) for s in sentences)
    by_n = {c.n: c for c in citations}
    order = [n for n in markers(text) if n in by_n]
    lead: bool | None = None
    if relevant:
        first = by_n[order[0]] if order else None
        lead = first is not None and is_labelled(TextRange(first.doc_id, first.start, first.end), relevant)
    context = [
        c.n
        for c in citations
        if any(TextRange(c.doc_id, c.start, c.end).overlap(r) > 0 for r in contexts.get(c.doc_id, ()))
    ]
    return FocusRecord(
        quoted_sentences=len(sentences),
        labelled_sentences=on_topic,
        quote_precision=on_topic / len(sentences) if labelled and sentences else None,
        lead_relevant=lead,
        answer_words=answer_words(text),
        context_quoted=context,
    )


@cache
def _context_ranges(corpus_dir: Path) -> dict[str, tuple[TextRange, ...]]:
    from ivig_qa.corpus import context_spans, load_corpus

    return {
        d.doc_id: tuple(TextRange(d.doc_id, s.start, s.end) for s in context_spans(d))
        for d in load_corpus(corpus_dir).documents
    }


def context_ranges(corpus_dir: Path) -> dict[str, tuple[TextRange, ...]]:
    """Heading and label lines of every corpus document ({} when there is no corpus folder)."""
    return _context_ranges(corpus_dir.resolve()) if corpus_dir.is_dir() else {}


# -- aggregation -----------------------------------------------------------------------------
def focus_metrics(records: Sequence[BaseModel]) -> dict[str, float | int | None]:
    """Quote precision (mean per answer), lead accuracy, words p50/p90 over expect=answer items,
    and quotes of headings/labels over all answers."""
    focused = [r for r in records if getattr(r, "focus", None) is not None]
    answers = [r.focus for r in focused if r.expect == "answer"]  # type: ignore[attr-defined]
    precision = [f.quote_precision for f in answers if f.quote_precision is not None]
    leads = [f.lead_relevant for f in answers if f.lead_relevant is not None]
    words = [f.answer_words for f in answers]
    return {
        "quote_precision": round(statistics.fmean(precision), 4) if precision else None,
        "lead_accuracy": round(sum(leads) / len(leads), 4) if leads else None,
        "answer_words_median": round(float(np.median(words)), 1) if words else None,
        "answer_words_p90": round(float(np.percentile(words, 90)), 1) if words else None,
        "context_quoted": sum(len(r.focus.context_quoted) for r in focused),  # type: ignore[attr-defined]
    }


# Focus metrics for which lower is better (``--fail-under`` treats them as limits).
LOWER_IS_BETTER = frozenset({"answer_words_median", "answer_words_p90", "context_quoted"})
