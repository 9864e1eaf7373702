"""Question sets: the ``SetItem`` schema, loading and validating a JSONL set, locating its evidence.

A set is validated up front, so a bad line is reported with its file and line number before
anything runs, and each gold evidence string is located (exactly, by character offsets) in its
expected documents' original text, where recall is later matched by location.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Category = Literal[
    "factual",
    "multi_doc",
    "follow_up",
    "adversarial",
    "out_of_scope",
    "personal_advice",
    "emergency",
    "symptom",
]
Expect = Literal["answer", "refuse_out_of_scope", "decline_personal_advice", "urgent_care"]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
EXPECTS: tuple[str, ...] = Expect.__args__  # type: ignore[attr-defined]


class SetItem(BaseModel):
    """One line of a question set (see docs/design.md); unknown keys are typos, so rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    category: Category
    question: str
    turns: list[str]
    expected_docs: list[str]
    evidence: list[str]
    must_include: list[list[str]]
    expect: Expect
    reference_answer: str = ""
    relevant: list[str] = Field(
        default_factory=list, description="Source sentences (verbatim) that answer the question."
    )
    supporting: list[str] = Field(
        default_factory=list, description="Source sentences (verbatim): qualifiers worth quoting beside them."
    )
    concept: str = Field(
        "", description="The red-flag concept (or its 'not this' neighbour) the item probes."
    )


@dataclass(frozen=True)
class TextRange:
    """A half-open character range in one document's original text."""

    doc_id: str
    start: int
    end: int

    def overlap(self, other: TextRange) -> int:
        if self.doc_id != other.doc_id:
            return 0
        return max(0, min(self.end, other.end) - max(self.start, other.start))

    def contains(self, other: TextRange) -> bool:
        return self.doc_id == other.doc_id and self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Evidence:
    """A gold evidence string and every place it occurs in the item's expected documents."""

    text: str
    spans: tuple[TextRange, ...]


@dataclass(frozen=True)
class EvalItem:
    """A validated set item with its line number and its evidence located in the corpus."""

    item: SetItem
    line: int
    evidence: tuple[Evidence, ...]
    relevant: tuple[Evidence, ...] = ()
    supporting: tuple[Evidence, ...] = ()


class EvalSetError(Exception):
    """The set cannot be evaluated; every message names the file and line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _describe(error: Mapping) -> str:
    """A pydantic error as an operator reads it ("missing key 'id'", "unknown category …")."""
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"missing key {loc!r}"
    if kind == "extra_forbidden":
        return f"unknown key {loc!r}"
    if kind == "literal_error" and loc == "category":
        return f"unknown category {error['input']!r} (expected one of: {', '.join(CATEGORIES)})"
    if kind == "literal_error" and loc == "expect":
        return f"unknown expect {error['input']!r} (expected one of: {', '.join(EXPECTS)})"
    return f"{loc}: {error['msg']}"


def locate(text: str, needle: str, doc_id: str) -> list[TextRange]:
    """Every exact occurrence of ``needle`` (no whitespace or NBSP normalisation)."""
    out: list[TextRange] = []
    at = text.find(needle)
    while needle and at >= 0:
        out.append(TextRange(doc_id, at, at + len(needle)))
        at = text.find(needle, at + 1)
    return out


def _check_item(
    item: SetItem, documents: Mapping[str, str]
) -> tuple[list[str], dict[str, tuple[Evidence, ...]]]:
    """Problems a schema cannot see: unknown documents, evidence (or a relevant/supporting
    label) not in them, empty follow-ups; and every gold string located, by kind."""
    problems = [
        f"expected document {d!r} is not in the corpus" for d in item.expected_docs if d not in documents
    ]
    if item.category == "follow_up" and not item.turns:
        problems.append("follow_up item has no earlier 'turns'")
    if item.evidence and not item.expected_docs:
        problems.append("evidence given but no expected_docs to find it in")
    located: dict[str, tuple[Evidence, ...]] = {}
    for kind, texts in (
        ("evidence", item.evidence),
        ("relevant", item.relevant),
        ("supporting", item.supporting),
    ):
        found: list[Evidence] = []
        for text in texts:
            spans = [s for d in item.expected_docs if d in documents for s in locate(documents[d], text, d)]
            if not spans:
                short = text if len(text) <= 80 else text[:77] + "..."
                problems.append(f"{kind} not found verbatim in {item.expected_docs}: {short!r}")
            found.append(Evidence(text, tuple(spans)))
        located[kind] = tuple(found)
    return problems, located


def load_set(path: Path, documents: Mapping[str, str]) -> list[EvalItem]:
    """Read and validate a JSONL set; raise ``EvalSetError`` listing every bad line."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalSetError([f"{path}: cannot read the question set ({exc})"]) from exc
    errors: list[str] = []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(f"{path}:{no}: malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(data, dict):
            errors.append(f"{path}:{no}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            item = SetItem.model_validate(data)
        except ValidationError as exc:
            errors.extend(f"{path}:{no}: {_describe(e)}" for e in exc.errors())
            continue
        problems, located = _check_item(item, documents)
        if item.id in seen:
            problems.append(f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen.setdefault(item.id, no)
        errors.extend(f"{path}:{no}: {p}" for p in problems)
        items.append(EvalItem(item, no, located["evidence"], located["relevant"], located["supporting"]))
    if not errors and not items:
        errors.append(f"{path}: no questions in the set")
    if errors:
        raise EvalSetError(errors)
    return items


def load_documents(corpus_dir: Path) -> dict[str, str]:
    """Original text of every corpus document by doc_id: the offsets citations point into."""
    from ivig_qa.corpus import load_corpus

    return {d.doc_id: d.text for d in load_corpus(corpus_dir).documents}
