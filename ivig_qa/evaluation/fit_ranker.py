"""Fit the sentence ranker (``data/ranker.toml``) on a labelled set, with cross-validation.

    python -m ivig_qa.evaluation.fit_ranker --set eval/questions.jsonl --out ivig_qa/data/ranker.toml

For every expect=answer item the real assistant condenses and retrieves the question as the
app does; each quotable sentence of the retrieved passages becomes one row of features
(``engines.ranking.FEATURES``), labelled 1 when it is one of the item's ``relevant`` sentences
(or ``supporting`` ones too, with ``--target labelled``). A logistic regression (scikit-learn,
L2) is fitted in grouped K-fold cross-validation (folds by question, so no question is scored by
a model that saw it) and compared with the current ranker on the held-out folds: precision of
the top sentence (P@1), mean reciprocal rank of the first relevant one, and recall of the
relevant sentences within the top 4. The model fitted on all rows is written as data.

``--compare`` scores another set (e.g. eval/holdout.jsonl) with the fitted model and the
current one, untouched by the fit.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ivig_qa.engines.extractive import ExtractiveEngine, compose_quotes
from ivig_qa.engines.ranking import FEATURES, Ranker, default_ranker
from ivig_qa.evaluation.dataset import EvalItem, TextRange, load_documents, load_set
from ivig_qa.evaluation.focus import is_labelled


@dataclass
class Question:
    """One labelled question: its quotable sentences (with passages) and their feature rows."""

    loaded: EvalItem
    items: list
    x: np.ndarray


@dataclass
class Rows:
    """Feature rows of one set: ``group`` is the question index of each row."""

    x: np.ndarray
    relevant: np.ndarray
    labelled: np.ndarray
    group: np.ndarray
    questions: list[Question]


@dataclass
class Context:
    """What simulating the composition needs: the engine, the documents and their context lines."""

    engine: ExtractiveEngine
    documents: dict[str, str]
    contexts: dict


def collect(set_files: Path | list[Path]) -> tuple[Rows, Context]:
    """Feature rows and labels of every labelled expect=answer item of the sets, through the real
    assistant (items without ``relevant`` labels have nothing to learn from)."""
    from ivig_qa.assistant import Assistant
    from ivig_qa.evaluation.checks import VerbatimSupportChecker
    from ivig_qa.evaluation.focus import context_ranges
    from ivig_qa.evaluation.runner import Evaluator
    from ivig_qa.settings import Settings

    settings = Settings.load()
    assistant = Assistant.load(settings)
    documents = load_documents(settings.index.corpus_dir)
    files = [set_files] if isinstance(set_files, Path) else set_files
    items = [i for f in files for i in load_set(f, documents) if i.item.expect == "answer" and i.relevant]
    evaluator = Evaluator(assistant, documents, VerbatimSupportChecker())
    engine = ExtractiveEngine(assistant.retriever, settings)
    questions: list[Question] = []
    rel: list[int] = []
    lab: list[int] = []
    group: list[int] = []
    for q, loaded in enumerate(items):
        answer, _ = evaluator.converse(loaded.item)
        retrieval = assistant.retrieve(answer.standalone_question or loaded.item.question)
        sentences, x = engine.features(retrieval)
        r, a = _labels(loaded, [s for s, _, _ in sentences])
        questions.append(Question(loaded, sentences, x))
        rel += r
        lab += a
        group += [q] * len(r)
    rows = Rows(np.vstack([q.x for q in questions]), np.array(rel), np.array(lab), np.array(group), questions)
    return rows, Context(engine, documents, context_ranges(settings.index.corpus_dir))


def _labels(loaded: EvalItem, sentences: list) -> tuple[list[int], list[int]]:
    relevant = [s for e in loaded.relevant for s in e.spans]
    labelled = relevant + [s for e in loaded.supporting for s in e.spans]
    spans = [TextRange(s.doc_id, s.start, s.end) for s in sentences]
    return [int(is_labelled(s, relevant)) for s in spans], [int(is_labelled(s, labelled)) for s in spans]


def ranking_scores(logits: np.ndarray, rows: Rows) -> dict[str, float]:
    """P@1, MRR of the first relevant sentence, relevant recall in the top 4 (means over questions)."""
    p1, mrr, r4 = [], [], []
    for q in range(len(rows.questions)):
        mask = rows.group == q
        order = np.argsort(-logits[mask], kind="stable")
        rel = rows.relevant[mask][order]
        if not rel.any():
            p1.append(0.0)
            mrr.append(0.0)
            r4.append(0.0)
            continue
        p1.append(float(rel[0]))
        mrr.append(1.0 / (1 + int(np.argmax(rel))))
        r4.append(float(rel[:4].sum() / rel.sum()))
    return {"P@1": float(np.mean(p1)), "MRR": float(np.mean(mrr)), "R@4": float(np.mean(r4))}


def fit(x: np.ndarray, y: np.ndarray, c: float, columns: list[int]) -> Ranker:
    """A standardised L2 logistic regression on the given feature columns."""
    from sklearn.linear_model import LogisticRegression

    sub = x[:, columns]
    mean, scale = sub.mean(axis=0), sub.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=2000).fit((sub - mean) / scale, y)
    return Ranker(
        tuple(FEATURES[i] for i in columns), mean, scale, model.coef_[0].copy(), float(model.intercept_[0])
    )


def out_of_fold(rows: Rows, y: np.ndarray, c: float, columns: list[int], folds: int) -> np.ndarray:
    """Held-out logits: each question scored by a model fitted without it."""
    from sklearn.model_selection import GroupKFold

    logits = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(rows.x, y, rows.group):
        logits[test] = fit(rows.x[train], y[train], c, columns).logits(rows.x[test])
    return logits


def calibrate(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: the slope and intercept that make held-out log-odds calibrated."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def calibration_table(logits: np.ndarray, y: np.ndarray, bins: int = 5) -> str:
    """Predicted vs observed rate per probability bin (a reliability table)."""
    p = 1.0 / (1.0 + np.exp(-logits))
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    out = []
    for lo, hi in itertools.pairwise(edges):
        m = (p >= lo) & (p <= hi)
        if m.any():
            out.append(f"{p[m].mean():.2f}→{y[m].mean():.2f}")
    return "  ".join(out)


def to_toml(ranker: Ranker, note: list[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in note]
    lines += [f"bias = {ranker.bias:.6f}", ""]
    lines += ["[calibration]", f"slope = {ranker.slope:.6f}", f"intercept = {ranker.intercept:.6f}", ""]
    for name, mean, scale, weight in zip(
        ranker.names, ranker.mean, ranker.scale, ranker.weights, strict=True
    ):
        lines += [
            "[[feature]]",
            f'name = "{name}"',
            f"mean = {mean:.6f}",
            f"scale = {scale:.6f}",
            f"weight = {weight:.6f}",
            "",
        ]
    return "\n".join(lines)


# -- choosing how many quotes ------------------------------------------------------------------
# A sentence is quoted when its calibrated probability reaches a threshold (quote_margin 0: no
# margin below the lead), up to a small cap; the grid is searched on out-of-fold scores.
SELECTION_GRID = {
    "max_answer_sentences": (3, 4, 5, 6),
    "quote_margin": (0.0,),
    "min_quote_probability": tuple(float(round(t, 2)) for t in np.arange(0.04, 0.51, 0.02)),
    "second_lead_margin": (0.0, 1.0, 2.0),
}
BETA = 2.0  # recall (cited evidence, key facts) weighs BETA times as much as quote precision


def simulate(rows: Rows, logits: np.ndarray, ctx: Context, **selection: float) -> dict[str, float]:
    """Compose every answer with these scores and selection settings; score it as the eval does."""
    from ivig_qa.evaluation.checks import evidence_cited, key_facts
    from ivig_qa.evaluation.focus import answer_words, score_focus
    from ivig_qa.policy.wording import responses

    engine = ExtractiveEngine(
        ctx.engine.retriever, ctx.engine.settings.updated(**selection), ctx.engine.ranker
    )
    head = responses()["answered"] + "\n"
    precision, lead, cited, facts, words = [], [], [], [], []
    for q, question in enumerate(rows.questions):
        ranked = engine.rank(question.items, logits[rows.group == q])
        chosen = engine.select(ranked)
        composed = compose_quotes(chosen, engine.name, len(engine.leads(chosen)))
        focus = score_focus(question.loaded, composed.text, composed.citations, ctx.documents, ctx.contexts)
        precision.append(focus.quote_precision or 0.0)
        lead.append(float(bool(focus.lead_relevant)))
        ev = question.loaded.evidence
        cited.append(np.mean([evidence_cited(e, composed.citations) for e in ev]) if ev else 1.0)
        groups = question.loaded.item.must_include
        facts.append(np.mean(key_facts(groups, composed.text)) if groups else 1.0)
        words.append(answer_words(head + composed.text))
    return {
        "precision": float(np.mean(precision)),
        "lead": float(np.mean(lead)),
        "cited": float(np.mean(cited)),
        "facts": float(np.mean(facts)),
        "words_p50": float(np.median(words)),
        "words_p90": float(np.percentile(words, 90)),
    }


def objective(m: dict[str, float], max_words: float) -> float:
    """F-beta of quote precision and recall (the mean of cited evidence and key facts), plus the
    lead: leaving out what answers costs a patient more than an extra quote (beta 2); a long
    answer is out."""
    if m["words_p50"] > max_words:
        return -1.0
    p, r = m["precision"], (m["cited"] + m["facts"]) / 2
    fbeta = (1 + BETA**2) * p * r / (BETA**2 * p + r) if p + r else 0.0
    return fbeta + 0.5 * m["lead"]


def tune_selection(rows: Rows, logits: np.ndarray, ctx: Context, max_words: float) -> tuple[dict, dict]:
    """The grid point with the best objective on (out-of-fold) scores."""
    best: tuple[float, dict, dict] | None = None
    names = list(SELECTION_GRID)
    for values in itertools.product(*SELECTION_GRID.values()):
        selection = dict(zip(names, values, strict=True))
        m = simulate(rows, logits, ctx, **selection)
        score = objective(m, max_words)
        if best is None or score > best[0]:
            best = (score, selection, m)
    assert best is not None
    return best[1], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, action="append", help="Fit on these (repeatable).")
    parser.add_argument("--compare", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--target", choices=["relevant", "labelled"], default="labelled")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--drop", action="append", default=[], help="Leave a feature out (ablation).")
    parser.add_argument("--tune", action="store_true", help="Also choose the selection settings.")
    parser.add_argument("--max-words", type=float, default=110.0)
    args = parser.parse_args()

    sets = args.set or [Path("eval/questions.jsonl")]
    rows, ctx = collect(sets)
    y = rows.relevant if args.target == "relevant" else rows.labelled
    columns = [i for i, name in enumerate(FEATURES) if name not in args.drop]
    current = default_ranker()
    names = " + ".join(map(str, sets))
    print(f"{names}: {len(rows.questions)} questions, {len(y)} sentences, {int(y.sum())} positive")
    print("current ranker       ", _fmt(ranking_scores(current.logits(rows.x), rows)))
    raw_oof = out_of_fold(rows, y, args.C, columns, args.folds)
    slope, intercept = calibrate(raw_oof, y)
    oof = slope * raw_oof + intercept
    cv = ranking_scores(oof, rows)
    print(f"fitted ({args.folds}-fold CV) ", _fmt(cv))
    print("  calibration (predicted→observed):", calibration_table(oof, y))
    final = fit(rows.x, y, args.C, columns)
    final = Ranker(final.names, final.mean, final.scale, final.weights, final.bias, slope, intercept)
    for name, w in sorted(zip(final.names, final.weights, strict=True), key=lambda t: -abs(t[1])):
        print(f"  {name:20s} {w:+.3f}")
    current_selection = {k: getattr(ctx.engine.settings.answer, k) for k in SELECTION_GRID}
    print(f"  simulated out of fold, current selection {current_selection}:")
    print("   ", _fmt(simulate(rows, oof, ctx, **current_selection)))
    selection: dict = {}
    if args.tune:
        selection, m = tune_selection(rows, oof, ctx, args.max_words)
        print("selection (on out-of-fold scores):", selection)
        print("  simulated:", _fmt(m))
    for other in args.compare:
        held, hctx = collect(other)
        print(f"{other} (untouched): current", _fmt(ranking_scores(current.logits(held.x), held)))
        print(f"{other} (untouched): fitted ", _fmt(ranking_scores(final.logits(held.x), held)))
        print(
            "  simulated, current selection:",
            _fmt(simulate(held, final.logits(held.x), hctx, **current_selection)),
        )
        if selection:
            print("  simulated:", _fmt(simulate(held, final.logits(held.x), hctx, **selection)))
    if args.out:
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in sets)).hexdigest()[:12]
        note = [
            "The sentence ranker: a logistic regression over engines/ranking.py FEATURES, fitted by",
            "`python -m ivig_qa.evaluation.fit_ranker` (do not edit by hand; refit instead).",
            f"Fitted {datetime.now(UTC):%Y-%m-%d} on {names} (sha256 {digest}…),",
            f"target {args.target}, C={args.C}; {args.folds}-fold CV by question: {_fmt(cv)}.",
            "Calibrated (Platt) on the out-of-fold log-odds: [calibration].",
            *([f"Selection chosen on out-of-fold scores: {selection}."] if selection else []),
            "Each feature is standardised with its mean and scale before its weight applies.",
            "",
        ]
        args.out.write_text(to_toml(final, note), "utf-8")
        print(f"wrote {args.out}")


def _fmt(scores: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in scores.items())


if __name__ == "__main__":
    main()
