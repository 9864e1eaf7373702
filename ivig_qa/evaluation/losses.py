"""Where an answer lost its evidence: a count per cause, to tell which mechanism to fix.

    python -m ivig_qa.evaluation.losses --set eval/questions.jsonl --set eval/spent/focus.jsonl

For every expect=answer item, each ``evidence`` string the answer does not cite is put down to
the first cause that explains it:

* ``not retrieved``: no retrieved passage holds it;
* ``follow-up words``: a follow-up whose evidence is not retrieved from its condensed question,
  but is from the message with the previous turn written out in full;
* ``ranked below the cut``: among the quotable sentences, but the selection stopped before it;
* ``cut by the cap``: its score would have quoted it, but the answer was already full;
* ``dropped as a duplicate``: its score quoted it, but it overlapped a chosen quote.

Each key fact (``must_include`` group) the answer misses is put down to: it is in a sentence right
next to a quoted one (``in a neighbour``), elsewhere among the retrieved sentences, or not
retrieved at all.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ivig_qa.evaluation.checks import evidence_cited, key_facts
from ivig_qa.evaluation.dataset import TextRange


def _holds(sentence, span: TextRange) -> bool:
    return sentence.doc_id == span.doc_id and sentence.start < span.end and span.start < sentence.end


def diagnose(set_file: Path) -> tuple[Counter, Counter, int, int]:
    """Counts of evidence losses and key-fact losses by cause, and the totals they come from."""
    from ivig_qa.engines.extractive import compose_quotes
    from ivig_qa.evaluation.fit_ranker import collect

    rows, ctx = collect(set_file)
    engine = ctx.engine
    logits = engine.ranker.logits(rows.x)
    evidence_losses: Counter = Counter()
    fact_losses: Counter = Counter()
    n_evidence = n_facts = 0
    for q, question in enumerate(rows.questions):
        ranked = engine.rank(question.items, logits[rows.group == q])
        chosen = engine.select(ranked)
        composed = compose_quotes(chosen, engine.name, len(engine.leads(chosen)))
        chosen_ids = {c.sentence.sentence_id for c in chosen}
        for ev in question.loaded.evidence:
            n_evidence += 1
            if evidence_cited(ev, composed.citations):
                continue
            evidence_losses[_evidence_cause(engine, ranked, chosen, chosen_ids, ev, question)] += 1
        groups = question.loaded.item.must_include
        for ok, group in zip(key_facts(groups, composed.text), groups, strict=True):
            n_facts += 1
            if not ok:
                fact_losses[_fact_cause(ranked, chosen, group, ctx.documents)] += 1
    return evidence_losses, fact_losses, n_evidence, n_facts


def _evidence_cause(engine, ranked, chosen, chosen_ids, ev, question) -> str:
    holding = [i for i, c in enumerate(ranked) if any(_holds(c.sentence, s) for s in ev.spans)]
    if not holding:
        item = question.loaded.item
        if item.turns and _found_with_full_turn(engine, item, ev):
            return "follow-up words"
        return "not retrieved"
    a = engine.settings.answer
    best = ranked[0]
    cand = ranked[holding[0]]
    if cand.sentence.sentence_id in chosen_ids:
        return "quoted but merged away"  # should not happen
    if not engine.passes(best, cand):
        return "ranked below the cut"
    if len(chosen) >= a.max_answer_sentences:
        return "cut by the cap"
    return "dropped as a duplicate"


def _found_with_full_turn(engine, item, ev) -> bool:
    retrieval = engine.retriever.retrieve(f"{item.turns[-1]} {item.question}")
    return any(_holds(s, span) for p in retrieval.passages for s in p.chunk.sentences for span in ev.spans)


def _fact_cause(ranked, chosen, group, documents) -> str:
    def has(sentence) -> bool:
        text = " ".join(sentence.text.split()).casefold()
        return any(" ".join(alt.split()).casefold() in text for alt in group)

    neighbours = set()
    for c in chosen:
        sentences = c.passage.chunk.sentences
        idx = next(i for i, s in enumerate(sentences) if s.start == c.sentence.start)
        for j in (idx - 1, idx + 1):
            if 0 <= j < len(sentences):
                neighbours.add(sentences[j].sentence_id)
    for c in ranked:
        if c.sentence.sentence_id in neighbours and has(c.sentence):
            return "in a neighbour"
    if any(has(c.sentence) for c in ranked):
        return "retrieved, not quoted"
    return "not retrieved"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, action="append", required=True)
    args = parser.parse_args()
    for set_file in args.set:
        ev, facts, n_ev, n_facts = diagnose(set_file)
        print(f"{set_file}: {sum(ev.values())} of {n_ev} evidence strings not cited")
        for cause, n in ev.most_common():
            print(f"  {cause:24s} {n}")
        print(f"{set_file}: {sum(facts.values())} of {n_facts} key facts missing")
        for cause, n in facts.most_common():
            print(f"  {cause:24s} {n}")


if __name__ == "__main__":
    main()
