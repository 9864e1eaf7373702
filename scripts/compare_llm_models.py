"""Compare packaged LLMs on the same questions with the current LLM engine (docs/llm-models.md).

One model per process (its RAM is the process's peak RSS): warm the model on one question, then
answer every answerable item of each set through the evaluator, keeping each answer's engine and
its kept/dropped sentence counts. Prints one JSON line per set and writes it to --out.

    PYTHONPATH=$PWD python scripts/compare_llm_models.py --model smollm2-135m-instruct-q4_1 \\
        --set eval/llm_questions.jsonl --set /tmp/holdout10.jsonl --out /tmp/i17m/smollm2.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import statistics
from pathlib import Path

from ivig_qa.assistant import Assistant
from ivig_qa.evaluation.checks import make_checker
from ivig_qa.evaluation.dataset import load_documents, load_set
from ivig_qa.evaluation.runner import Evaluator, compute_metrics
from ivig_qa.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A packaged model (llm.model).")
    parser.add_argument("--set", action="append", required=True, type=Path, dest="sets")
    parser.add_argument("--limit", type=int, default=None, help="First N answerable items of each set.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    settings = Settings.load(engine="llm", model=args.model)
    assistant = Assistant.load(settings)
    documents = load_documents(settings.index.corpus_dir)
    assistant.ask("How is IVIG given?")  # load and warm the model: the numbers below are warm
    rows = []
    for set_file in args.sets:
        items = [i for i in load_set(set_file, documents) if i.item.expect == "answer"][: args.limit]
        answers = []
        ask = assistant.ask

        def keep(*a, _ask=ask, _answers=answers, **kw):
            _answers.append(_ask(*a, **kw))
            return _answers[-1]

        assistant.ask = keep  # the evaluator asks; we keep the last answer of each item
        evaluator = Evaluator(assistant, documents, make_checker("verbatim"))
        records = []
        finals = []
        for item in items:
            records.append(evaluator.evaluate(item))
            finals.append(answers[-1])
        assistant.ask = ask
        metrics = compute_metrics(records)
        kept = sum(a.timings_ms.get("kept_sentences", 0) for a in finals)
        dropped = sum(a.timings_ms.get("dropped_sentences", 0) for a in finals)
        fallbacks = collections.Counter(a.engine for a in finals if not a.engine.startswith("llm:"))
        first = [a.timings_ms["llm_first_token"] for a in finals if "llm_first_token" in a.timings_ms]
        row = {
            "model": args.model,
            "set": set_file.name,
            "n": len(items),
            "fallback_rate": round(sum(fallbacks.values()) / len(items), 3),
            "fallbacks": dict(fallbacks),
            "verified_rate": round(kept / (kept + dropped), 3) if kept + dropped else None,
            "kept": kept,
            "dropped": dropped,
            "key_facts": metrics.key_fact_coverage,
            "citation_recall": metrics.citation_recall,
            "citation_precision": metrics.citation_precision,
            "words_median": metrics.answer_words_median,
            "first_token_ms_median": round(statistics.median(first)) if first else None,
            "total_ms_median": round(statistics.median(a.timings_ms["total"] for a in finals)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


if __name__ == "__main__":
    main()
