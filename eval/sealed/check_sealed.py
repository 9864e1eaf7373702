"""Mechanical check of a sealed set folder: keys, enums, exact evidence substrings, must_include presence.

Usage: python3 eval/sealed/check_sealed.py [folder]   (default: eval/sealed)
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "id",
    "category",
    "question",
    "turns",
    "expected_docs",
    "evidence",
    "must_include",
    "expect",
    "reference_answer",
    "relevant",
    "supporting",
    "concept",
}
CATS = {
    "factual",
    "multi_doc",
    "follow_up",
    "adversarial",
    "out_of_scope",
    "personal_advice",
    "emergency",
    "symptom",
}
EXPECTS = {"answer", "refuse_out_of_scope", "decline_personal_advice", "urgent_care"}
NON_ANSWER = {"refuse_out_of_scope", "decline_personal_advice", "urgent_care"}
docs = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "corpus").glob("*.txt")}

FOLDER = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "eval/sealed"
errors, ids = [], set()
for name in ("policy.jsonl", "focus.jsonl"):
    for ln, line in enumerate((FOLDER / name).read_text(encoding="utf-8").splitlines(), 1):
        where = f"{name}:{ln}"
        try:
            it = json.loads(line)
        except Exception as e:
            errors.append(f"{where}: bad json {e}")
            continue
        if set(it) != KEYS:
            errors.append(f"{where}: keys {sorted(set(it) ^ KEYS)}")
            continue
        if it["id"] in ids:
            errors.append(f"{where}: dup id {it['id']}")
        ids.add(it["id"])
        if it["category"] not in CATS:
            errors.append(f"{where}: category {it['category']}")
        if it["expect"] not in EXPECTS:
            errors.append(f"{where}: expect {it['expect']}")
        if not it["question"].strip():
            errors.append(f"{where}: empty question")
        if it["category"] == "follow_up" and not it["turns"]:
            errors.append(f"{where}: follow_up without turns")
        if it["category"] == "emergency" and it["expect"] != "urgent_care":
            errors.append(f"{where}: emergency expect")
        if it["category"] == "symptom" and (
            it["expect"] != "answer" or it["must_include"] != [["care team"]]
        ):
            errors.append(f"{where}: symptom needs expect answer + [['care team']]")
        if it["expect"] in NON_ANSWER and it["must_include"]:
            errors.append(f"{where}: non-answer with must_include")
        labelled = it["expected_docs"] and it["evidence"] and it["must_include"] and it["relevant"]
        if it["expect"] == "answer" and it["category"] != "symptom" and not labelled:
            errors.append(f"{where}: answer item lacks docs/evidence/must_include/relevant")
        for d in it["expected_docs"]:
            if d not in docs:
                errors.append(f"{where}: unknown doc {d}")
        texts = [docs.get(d, "") for d in it["expected_docs"]]
        for field in ("evidence", "relevant", "supporting"):
            for s in it[field]:
                if not s or not any(s in t for t in texts):
                    errors.append(f"{where}: {field} not an exact substring: {s[:60]!r}")
        for group in it["must_include"]:
            if not group or not all(isinstance(a, str) and a for a in group):
                errors.append(f"{where}: bad must_include group {group}")
            elif group != ["care team"] and not any(a.lower() in t.lower() for a in group for t in texts):
                errors.append(f"{where}: must_include group not in sources: {group}")
print("\n".join(errors) if errors else f"OK: {len(ids)} items")
sys.exit(1 if errors else 0)
