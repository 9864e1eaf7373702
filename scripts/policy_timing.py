"""How many milliseconds the answer policy adds to a warm answer (run: python scripts/policy_timing.py).

Times, per question of the given sets, after one warm-up pass: normalisation and spelling, triage
(both layers: the message's clauses embedded in one batch call), scope, and the whole answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ivig_qa.assistant import Assistant
from ivig_qa.policy.normalise import correct_spelling, normalise
from ivig_qa.policy.triage import strip_injection
from ivig_qa.settings import Settings
from ivig_qa.text import strip_markup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sets", nargs="*", type=Path, default=[Path("eval/questions.jsonl"), Path("eval/triage.jsonl")]
    )
    args = parser.parse_args()
    assistant = Assistant.load(Settings(), build=False)
    questions = [
        json.loads(line)["question"] for p in args.sets for line in p.read_text().splitlines() if line.strip()
    ]
    for q in questions:  # warm-up: caches, lazy loads
        assistant.ask(q)
    marks: dict[str, list[float]] = {"normalise": [], "triage": [], "scope": [], "answer": []}
    for q in questions:
        t0 = time.perf_counter()
        plain = strip_markup(strip_injection(normalise(q)))
        text = correct_spelling(plain, assistant.known_words, assistant.preferred_words)
        t1 = time.perf_counter()
        assistant.triager.assess(text)
        t2 = time.perf_counter()
        assistant.scope.coverage(text)
        t3 = time.perf_counter()
        assistant.ask(q)
        t4 = time.perf_counter()
        for key, a, b in (("normalise", t0, t1), ("triage", t1, t2), ("scope", t2, t3), ("answer", t3, t4)):
            marks[key].append((b - a) * 1000)
    print(f"{len(questions)} questions, warm, milliseconds:")
    for key, values in marks.items():
        values.sort()
        p95 = values[int(0.95 * (len(values) - 1))]
        print(f"  {key:10} median {statistics.median(values):6.2f}   p95 {p95:6.2f}")


if __name__ == "__main__":
    main()
