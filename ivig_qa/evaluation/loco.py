"""Leave-one-concept-out check of triage: does it catch emergencies of a concept it has no examples of?

For each red-flag concept named by a set's emergency items, the concept's lay descriptions are
removed from the semantic layer and the items are triaged again: caught means urgent through
any remaining layer or concept. ``patterns=False`` also drops every pattern (the semantic layer
alone, over the other concepts' descriptions). Run:

    python -m ivig_qa.evaluation.loco --set eval/triage.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ivig_qa.policy.normalise import correct_spelling, normalise
from ivig_qa.policy.red_flags import Catalogue
from ivig_qa.policy.semantic import SemanticLayer
from ivig_qa.policy.triage import Triager


@dataclass(frozen=True)
class LocoRow:
    concept: str
    n: int
    caught: int

    @property
    def rate(self) -> float:
        return self.caught / self.n if self.n else 1.0


def emergencies(path: Path) -> list[tuple[str, str]]:
    """(concept, question) of a set's urgent-care items that name a concept."""
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [
        (r["concept"], r["question"]) for r in rows if r.get("expect") == "urgent_care" and r.get("concept")
    ]


def _patternless(catalogue: Catalogue) -> Catalogue:
    return replace(catalogue, concepts=tuple(replace(c, patterns=()) for c in catalogue.concepts))


def leave_one_concept_out(
    layer: SemanticLayer,
    items: Iterable[tuple[str, str]],
    *,
    patterns: bool = True,
    known: frozenset[str] = frozenset(),
) -> list[LocoRow]:
    """Per concept: how many of its items are still urgent with its descriptions removed."""
    by_concept: dict[str, list[str]] = {}
    for concept, question in items:
        by_concept.setdefault(concept, []).append(question)
    preferred = layer.catalogue.words
    rows: list[LocoRow] = []
    for concept, questions in sorted(by_concept.items()):
        reduced = layer.without(concept)
        catalogue = reduced.catalogue if patterns else _patternless(reduced.catalogue)
        reduced.catalogue = catalogue
        triager = Triager(catalogue, reduced)
        caught = sum(
            triager.assess(correct_spelling(normalise(q), known, preferred)).is_urgent for q in questions
        )
        rows.append(LocoRow(concept, len(questions), caught))
    return rows


def main() -> None:
    from ivig_qa.embeddings import StoreEmbeddings
    from ivig_qa.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=Path("eval/triage.jsonl"))
    args = parser.parse_args()
    catalogue = Catalogue.load()
    layer = SemanticLayer(catalogue, StoreEmbeddings(Settings()).questions.embed_documents)
    items = emergencies(args.set)
    for label, flag in (("patterns + semantic", True), ("semantic only", False)):
        rows = leave_one_concept_out(layer, items, patterns=flag)
        total, caught = sum(r.n for r in rows), sum(r.caught for r in rows)
        print(f"\n{label}: {caught}/{total} = {caught / total:.3f} caught with their own concept left out")
        for r in rows:
            print(f"  {r.concept:22} {r.caught}/{r.n}")


if __name__ == "__main__":
    main()
