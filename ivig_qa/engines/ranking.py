"""How relevant each source sentence is to a question: its features and the learned combination.

Every sentence of the retrieved passages gets a feature vector (dense similarity to the
question, IDF-weighted word coverage of the question's own words, of a follow-up's earlier
words and of the lay-term expansions, the same coverage in its section heading and title,
the answer type it states, its passage's retrieval rank…), and a logistic model turns the
vector into the probability that the sentence answers the question (``d2q`` features compare
it with the questions generated for each sentence at index time, ``ivig_qa.doc2query``). The
weights are data (``data/ranker.toml``), fitted on labelled questions by
``ivig_qa.evaluation.fit_ranker``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from ivig_qa import data
from ivig_qa.text import tokenize
from ivig_qa.types import ScoredPassage, Sentence

# A sentence opening with one of these leans on the one before it (a subject it names
# elsewhere, a demonstrative, a continuation): it is quoted with that sentence.
LEANS_BACK = re.compile(
    r"^(this|that|these|those|they|he|she|his|her|their|such|furthermore|may|then)\b",
    re.IGNORECASE,
)
# The mark ``conversation.condense`` appends to a follow-up: the earlier question's words.
_FOLLOW_UP_MARK = re.compile(r"\s*\(follow-up to: ([^)]*)\)")


@dataclass(frozen=True)
class AnswerType:
    """A kind of fact a question asks for, and how a sentence that states it looks."""

    name: str
    question: re.Pattern[str]
    sentence: re.Pattern[str]
    not_question: re.Pattern[str] | None = None

    def asked_by(self, question: str) -> bool:
        return bool(self.question.search(question)) and not (
            self.not_question and self.not_question.search(question)
        )


@cache
def answer_types() -> tuple[AnswerType, ...]:
    """The answer types of ``data/answer_types.toml``."""
    flags = re.IGNORECASE
    return tuple(
        AnswerType(
            t["name"],
            re.compile(t["question"], flags),
            re.compile(t["sentence"], flags),
            re.compile(t["not_question"], flags) if t.get("not_question") else None,
        )
        for t in data.load("answer_types.toml")["type"]
    )


def asked_types(question: str) -> list[AnswerType]:
    return [t for t in answer_types() if t.asked_by(question)]


def split_follow_up(query: str) -> tuple[str, str]:
    """A standalone question as (the message's own words, the earlier words a follow-up carries)."""
    m = _FOLLOW_UP_MARK.search(query)
    return (query[: m.start()] + query[m.end() :], m.group(1)) if m else (query, "")


@dataclass(frozen=True)
class Ranker:
    """A logistic model over named features, standardised by the means and scales it was fitted with."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    # Platt calibration of the model's log-odds, fitted on held-out (cross-validated) scores:
    # ``slope * raw + intercept`` are log-odds a probability threshold can be set on.
    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def from_data(cls, raw: Mapping) -> Ranker:
        feats = raw["feature"]
        calibration = raw.get("calibration", {})
        return cls(
            tuple(f["name"] for f in feats),
            np.array([f["mean"] for f in feats], dtype=np.float64),
            np.array([f["scale"] for f in feats], dtype=np.float64),
            np.array([f["weight"] for f in feats], dtype=np.float64),
            float(raw["bias"]),
            float(calibration.get("slope", 1.0)),
            float(calibration.get("intercept", 0.0)),
        )

    def raw_logits(self, features: np.ndarray) -> np.ndarray:
        """The model's own log-odds for each row (one sentence's features, in ``FEATURES`` order)."""
        columns = [FEATURES.index(n) for n in self.names]
        x = (features[:, columns] - self.mean) / self.scale
        return x @ self.weights + self.bias

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Calibrated log-odds that each row's sentence is one a careful answer quotes."""
        return self.slope * self.raw_logits(features) + self.intercept


@cache
def default_ranker() -> Ranker:
    return Ranker.from_data(data.load("ranker.toml"))


FEATURES: tuple[str, ...] = (
    "dense",  # cosine of the sentence (with its heading) and the expanded question
    "dense_gap",  # dense minus the best dense of this question's candidates
    "dense_rank",  # 1 / (1 + rank by dense among this question's candidates)
    "passage_similarity",  # the passage's own best dense similarity
    "passage_prior",  # 1 / (1 + retrieval rank of the passage)
    "lexical",  # IDF-weighted share of the message's own words the sentence has
    "lexical_gap",  # lexical minus the best lexical of this question's candidates
    "lexical_rank",  # 1 / (1 + rank by lexical)
    "heading_lexical",  # …of the rest, the share its heading and title have
    "context_lexical",  # share of a follow-up's carried words in sentence + heading + title
    "joint_lexical",  # share of the message's and the carried words in sentence + heading + title
    "expansion_lexical",  # share of the lay-term expansions the sentence has
    "density",  # IDF-weighted share of the sentence's words that were asked
    "typed",  # states the kind of fact asked (a frequency for "how often"…)
    "untyped",  # a kind of fact is asked and the sentence states none
    "length",  # log of the sentence's content words
    "leans_back",  # opens leaning on the sentence before
    "document_rank",  # 1 / (1 + rank by dense within its document's candidates)
    "document_lexical",  # the best lexical of its document's candidates (the document is on topic)
    "d2q",  # best cosine of the question and the sentence's doc2query questions (else: dense)
    "d2q_gap",  # d2q minus the best d2q of this question's candidates
    "d2q_rank",  # 1 / (1 + rank by d2q)
)


def _rank_share(values: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) of each value, highest first (ties share the better rank)."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].min()
    return 1.0 / (1.0 + ranks)


def sentence_features(
    query: str,
    expanded_query: str,
    items: list[tuple[Sentence, ScoredPassage, float]],
    idf: Mapping[str, float],
    d2q: np.ndarray | None = None,
) -> np.ndarray:
    """The feature matrix (rows: ``items`` as (sentence, passage, dense similarity)).

    ``d2q`` is each sentence's best similarity to its doc2query questions; without it (or where
    a sentence has none, as the caller marks) the sentence's own dense similarity stands in.
    """
    own_text, context_text = split_follow_up(query)
    own = set(tokenize(own_text))
    context = set(tokenize(context_text)) - own
    expansion = set(tokenize(expanded_query)) - own - set(tokenize(query))
    types = asked_types(own_text)

    def weight(terms: set[str] | frozenset[str]) -> float:
        return sum(max(idf.get(t, 0.0), 0.0) for t in terms)

    def coverage(found: set[str] | frozenset[str], wanted: set[str]) -> float:
        total = weight(wanted)
        return weight(wanted & found) / total if total else 0.0

    x = np.zeros((len(items), len(FEATURES)))
    col = {name: i for i, name in enumerate(FEATURES)}
    for row, (sentence, passage, dense) in enumerate(items):
        terms = frozenset(tokenize(sentence.text))
        around = frozenset(tokenize(f"{passage.chunk.title} {passage.chunk.heading}"))
        typed = any(t.sentence.search(sentence.text) for t in types)
        values = {
            "dense": dense,
            "passage_similarity": passage.similarity,
            "passage_prior": 1.0 / (1.0 + passage.rank),
            "lexical": coverage(terms, own),
            "heading_lexical": coverage(around, own - terms),
            "context_lexical": coverage(terms | around, context),
            "joint_lexical": coverage(terms | around, own | context),
            "expansion_lexical": coverage(terms, expansion),
            "density": weight(terms & (own | expansion | context)) / max(weight(terms), 1e-9),
            "typed": float(typed),
            "untyped": float(bool(types) and not typed),
            "length": math.log1p(len(terms)),
            "leans_back": float(bool(LEANS_BACK.match(sentence.text))),
        }
        for name, value in values.items():
            x[row, col[name]] = value
    x[:, col["d2q"]] = x[:, col["dense"]] if d2q is None else d2q
    if len(items):
        for base in ("dense", "lexical", "d2q"):
            x[:, col[f"{base}_gap"]] = x[:, col[base]] - x[:, col[base]].max()
            x[:, col[f"{base}_rank"]] = _rank_share(x[:, col[base]])
        docs = np.array([sentence.doc_id for sentence, _, _ in items])
        for doc in np.unique(docs):
            same = docs == doc
            x[same, col["document_rank"]] = _rank_share(x[same, col["dense"]])
            x[same, col["document_lexical"]] = x[same, col["lexical"]].max()
    return x
