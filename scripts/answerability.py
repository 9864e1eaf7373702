"""Does the ranker tell answerable questions from out-of-scope ones? (run: python scripts/answerability.py)

Every item of the pool sets goes through the real assistant; its retrieved sentences get the
ranker's features, and the question's signals are: the best sentence's calibrated probability
(``pmax``: out of fold for the questions the ranker was fitted on, refitted per fold by question
with ``fit_ranker``'s machinery; the packaged ranker for the rest), the best sentence similarity,
the best sentence's share of the question's words, and the best doc2query similarity (``d2q``:
the question against the questions generated for each candidate sentence). For each signal it
prints, per threshold, the out-of-scope items caught by the signal alone and the answerable ones
it would refuse (those reaching the scope step: not a mild or past symptom, not another
language). Rerun it after the ranker is refitted: a gate would be worth shipping only if it
catches a clear majority of the out-of-scope items at <= 2% answerable refused.

``--llm`` (needs the llm extra) adds the packaged chat model's own reading: ``llm`` is P(yes)
against P(no) for "Do the quotes answer the question?", asked over the LLM engine's answer
prompt (its numbered quotes and the question; the last line replaced), read off the first reply
token's logits; ``llm_premise`` is the larger of that and P(yes) for "Does any quote disagree
with what the question assumes?" (a false premise the quotes correct reads as "not answered").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

POOL = [
    "eval/questions.jsonl",
    "eval/holdout.jsonl",
    "eval/spent/policy.jsonl",
    "eval/spent/focus.jsonl",
    "eval/triage.jsonl",
    "eval/triage_holdout.jsonl",
    "eval/triage_fresh.jsonl",
]
FITTED_ON = {"eval/questions.jsonl", "eval/spent/focus.jsonl", "eval/spent/policy.jsonl"}


def collect(sets: list[str]) -> list[dict]:
    """Per item: its set, expectation, reasons, feature rows and labels."""
    from ivig_qa.assistant import Assistant
    from ivig_qa.engines.extractive import ExtractiveEngine
    from ivig_qa.evaluation.checks import VerbatimSupportChecker
    from ivig_qa.evaluation.dataset import load_documents, load_set
    from ivig_qa.evaluation.fit_ranker import _labels
    from ivig_qa.evaluation.runner import Evaluator
    from ivig_qa.settings import Settings

    settings = Settings.load()
    assistant = Assistant.load(settings, build=False)
    documents = load_documents(settings.index.corpus_dir)
    evaluator = Evaluator(assistant, documents, VerbatimSupportChecker())
    engine = ExtractiveEngine(assistant.retriever, settings)
    out = []
    for name in sets:
        for loaded in load_set(Path(name), documents):
            answer, _ = evaluator.converse(loaded.item)
            retrieval = assistant.retrieve(answer.standalone_question or loaded.item.question)
            sentences, x = engine.features(retrieval)
            labels = _labels(loaded, [s for s, _, _ in sentences])[1] if loaded.relevant else []
            out.append(
                {
                    "set": name,
                    "expect": loaded.item.expect,
                    "reasons": {r.id for r in answer.reasons},
                    "x": x,
                    "labelled": np.array(labels),
                    "best_similarity": retrieval.best_similarity,
                    "retrieval": retrieval,
                }
            )
    return out


def signals(records: list[dict], folds: int) -> None:
    """Adds ``pmax`` (out of fold where the ranker saw the question) and ``lexical`` to each record."""
    from sklearn.model_selection import GroupKFold

    from ivig_qa.engines.ranking import FEATURES, default_ranker
    from ivig_qa.evaluation.fit_ranker import calibrate, fit

    for r in records:
        r["logits"] = default_ranker().logits(r["x"]) if len(r["x"]) else np.array([-30.0])
    fitted = [r for r in records if r["set"] in FITTED_ON and r["expect"] == "answer" and len(r["labelled"])]
    x = np.vstack([r["x"] for r in fitted])
    y = np.concatenate([r["labelled"] for r in fitted])
    group = np.concatenate([[k] * len(r["x"]) for k, r in enumerate(fitted)])
    raw = np.zeros(len(y))
    columns = list(range(len(FEATURES)))
    for train, test in GroupKFold(n_splits=folds).split(x, y, group):
        raw[test] = fit(x[train], y[train], 1.0, columns).raw_logits(x[test])
    slope, intercept = calibrate(raw, y)
    for k, r in enumerate(fitted):
        r["logits"] = slope * raw[group == k] + intercept
    lexical, d2q = FEATURES.index("lexical"), FEATURES.index("d2q")
    for r in records:
        r["pmax"] = float(1.0 / (1.0 + np.exp(-r["logits"].max())))
        r["lexical"] = float(r["x"][:, lexical].max()) if len(r["x"]) else 0.0
        r["d2q"] = float(r["x"][:, d2q].max()) if len(r["x"]) else 0.0


ANSWERS = "Do the quotes answer the question? Reply with one word: yes or no."
PREMISE = "Does any quote disagree with what the question assumes? Reply with one word: yes or no."


def llm_signals(records: list[dict]) -> None:
    """Adds ``llm`` and ``llm_premise`` (module docstring) to every record the table reads."""
    from ivig_qa.assistant import Assistant
    from ivig_qa.engines.llm.backends import load_chat_model
    from ivig_qa.engines.llm.engine import LLMEngine
    from ivig_qa.engines.llm.prompts import SYSTEM_PROMPT, prompt_text
    from ivig_qa.settings import Settings

    settings = Settings.load()
    model = load_chat_model(settings)
    client = model.chat.client  # llama.cpp's Llama: only it exposes the logits
    planner = LLMEngine(Assistant.load(settings, build=False).retriever, settings, model)

    def ids(words: tuple[str, ...]) -> list[int]:
        tokens = [client.tokenize(w.encode(), add_bos=False, special=False) for w in words]
        return sorted({t[0] for t in tokens if len(t) == 1})

    yes, no = ids(("yes", "Yes", " yes", " Yes")), ids(("no", "No", " no", " No"))

    def p_yes(question: str, sources: list, ask: str) -> float:
        user = prompt_text(question, sources).rsplit("\n", 1)[0] + "\n" + ask
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        client.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
        # llama.cpp keeps the last position's logits: with one token to write, the first token's.
        logits = np.ctypeslib.as_array(client._ctx.get_logits(), shape=(client.n_vocab(),))
        top = logits.max()
        odds = np.exp(logits[yes] - top).sum() / np.exp(logits[no] - top).sum()
        return float(odds / (1.0 + odds))

    for r in records:
        if r["expect"] == "refuse_out_of_scope" or (r["expect"] == "answer" and reaches_scope(r)):
            sources = planner.plan(r["retrieval"].query, r["retrieval"]).sources
            r["llm"] = p_yes(r["retrieval"].query, sources, ANSWERS)
            r["llm_premise"] = max(r["llm"], p_yes(r["retrieval"].query, sources, PREMISE))


def reaches_scope(r: dict) -> bool:
    """Not answered as a symptom or another language before the scope step."""
    return not any(
        i.startswith(("symptom", "language")) or i == "scope.described_symptom" for i in r["reasons"]
    )


def table(records: list[dict], names: tuple[str, ...]) -> str:
    oos = [r for r in records if r["expect"] == "refuse_out_of_scope"]
    ans = [r for r in records if r["expect"] == "answer" and reaches_scope(r)]
    lines = [f"{len(oos)} out-of-scope items, {len(ans)} answerable items reaching the scope step"]
    for name in names:
        lines.append(f"{name}: threshold | out of scope caught | answerable refused")
        for t in np.quantile([r[name] for r in oos], [0.1, 0.25, 0.5, 0.6, 0.75, 0.9]):
            caught = sum(r[name] < t for r in oos)
            refused = sum(r[name] < t for r in ans)
            lines.append(
                f"  < {t:.3f} | {caught}/{len(oos)} ({caught / len(oos):.2f}) | "
                f"{refused}/{len(ans)} ({refused / len(ans):.3f})"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", default=POOL)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--llm", action="store_true", help="add the packaged chat model's reading")
    args = parser.parse_args()
    records = collect(args.sets)
    signals(records, args.folds)
    names = ("pmax", "best_similarity", "lexical", "d2q")
    if args.llm:
        llm_signals(records)
        names += ("llm", "llm_premise")
    print(table(records, names))


if __name__ == "__main__":
    main()
