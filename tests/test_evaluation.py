"""The evaluation command: set validation, location-based recall, ALCE checks, thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.cli import app
from ivig_qa.evaluation.checks import (
    Statement,
    VerbatimSupportChecker,
    evidence_found,
    judge_statement,
    make_checker,
    split_statements,
    unescaped_markup,
)
from ivig_qa.evaluation.dataset import EvalSetError, Evidence, TextRange, load_documents, load_set
from ivig_qa.evaluation.report import REPORT_FILES
from ivig_qa.evaluation.runner import compute_metrics, parse_threshold, run_evaluation
from ivig_qa.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SETS = [REPO / "eval" / "questions.jsonl", REPO / "eval" / "holdout.jsonl"]

LUPUS_SCHEDULE = "Usually given as an intravenous (IV) infusion once or twice a month."
OFF_TOPIC = "The Medline database and international trial registry databases were searched"


def item(**over: object) -> dict:
    base = {
        "id": "lupus-how-often",
        "category": "factual",
        "question": "How often is IVIG given for lupus?",
        "turns": [],
        "expected_docs": ["ivig-lupus"],
        "evidence": [LUPUS_SCHEDULE],
        "must_include": [["once or twice a month"]],
        "expect": "answer",
        "reference_answer": "Once or twice a month.",
    }
    return {**base, **over}


def write_set(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", "utf-8")
    return path


@pytest.fixture(scope="module")
def documents(corpus_dir: Path) -> dict[str, str]:
    return load_documents(corpus_dir)


# -- the set loader --------------------------------------------------------------------------
def test_loader_names_file_and_line_of_every_bad_line(tmp_path: Path, documents: dict[str, str]) -> None:
    bad = {k: v for k, v in item(id="no-expect").items() if k != "expect"}
    path = write_set(
        tmp_path / "bad.jsonl",
        [
            item(),
            '{"id": "broken", "category": ',
            item(id="weird", category="trivia"),
            bad,
            item(id="invented", evidence=["IVIG is given every single hour"]),
            item(id="lupus-how-often"),
        ],
    )
    with pytest.raises(EvalSetError) as caught:
        load_set(path, documents)
    text = str(caught.value)
    assert f"{path}:2: malformed JSON" in text
    assert f"{path}:3: unknown category 'trivia'" in text
    assert f"{path}:4: missing key 'expect'" in text
    assert f"{path}:5: evidence not found verbatim" in text
    assert f"{path}:6: duplicate id 'lupus-how-often' (first on line 1)" in text
    assert not any(f"{path}:1:" in e for e in caught.value.errors)


@pytest.mark.parametrize("set_path", SETS, ids=lambda p: p.name)
def test_every_evidence_string_is_verbatim_in_an_expected_document(
    set_path: Path, corpus_dir: Path, documents: dict[str, str]
) -> None:
    for no, line in enumerate(set_path.read_text("utf-8").splitlines(), start=1):
        row = json.loads(line)
        for evidence in row["evidence"]:
            texts = [(corpus_dir / f"{d}.txt").read_bytes().decode("utf-8-sig") for d in row["expected_docs"]]
            assert any(evidence in t for t in texts), f"{set_path.name}:{no} {row['id']}: {evidence!r}"
    assert load_set(set_path, documents)  # and the loader agrees


# -- matching and support checking ---------------------------------------------------------------
def test_evidence_counts_when_half_of_it_is_covered() -> None:
    evidence = Evidence("x" * 100, (TextRange("doc", 100, 200),))
    assert evidence_found(evidence, [TextRange("doc", 0, 150)])
    assert not evidence_found(evidence, [TextRange("doc", 0, 149)])
    assert not evidence_found(evidence, [TextRange("other", 0, 300)])
    assert evidence_found(evidence, [TextRange("doc", 0, 130), TextRange("doc", 170, 400)])  # union: 60%


def test_verbatim_checker_accepts_a_quote_and_rejects_an_invented_statement() -> None:
    checker = make_checker("verbatim")
    passage = "IVIG is usually given every couple of weeks,\nand is incredibly\u00a0expensive."
    assert checker.supports(
        "IVIG is usually given every couple of weeks, and is incredibly expensive.", [passage]
    )
    assert not checker.supports("IVIG cures lupus permanently after one dose.", [passage])
    assert not checker.supports("IVIG is usually given every couple of weeks.", [])


def test_alce_precision_flags_a_citation_that_is_not_needed() -> None:
    quotes = {1: "Usually given once or twice a month.", 2: "Kidney failure is rare."}
    judged = judge_statement(
        Statement("Usually given once or twice a month.", (1, 2)), quotes, VerbatimSupportChecker()
    )
    assert judged.supported and judged.precise == [True, False]
    missing = judge_statement(
        Statement("Usually given once or twice a month.", (3,)), quotes, VerbatimSupportChecker()
    )
    assert not missing.supported


def test_statements_are_bullets_and_cited_sentences() -> None:
    text = (
        "Here is what the sources say:\n**Lupus**\n- Usually given monthly. [1]\n"
        "It is costly [2]. Ask your team. [1, 2]\nNo citation here."
    )
    statements, uncited = split_statements(text)
    assert [(s.text, s.cites) for s in statements] == [
        ("Usually given monthly.", (1,)),
        ("It is costly.", (2,)),
        ("Ask your team.", (1, 2)),
    ]
    assert uncited == 1


def test_markup_from_the_question_must_not_come_back_raw() -> None:
    question = "<img src=x onerror=alert(1)> which brands?"
    assert unescaped_markup(question, "The sources don't mention &lt;img onerror&gt;") == []
    assert unescaped_markup(question, "You asked: <img src=x onerror=alert(1)>") == ["<img", "onerror="]


def test_thresholds_parse_and_reject_unknown_metrics() -> None:
    assert parse_threshold("retrieval_recall=0.9").value == 0.9
    assert parse_threshold("latency_ms_p95=800").lower_is_better
    with pytest.raises(ValueError, match="unknown metric 'recall'"):
        parse_threshold("recall=0.9")


# -- metrics through the real assistant -------------------------------------------------------------
def test_metrics_on_a_tiny_set_through_the_real_assistant(
    tmp_path: Path, assistant: Assistant, documents: dict[str, str]
) -> None:
    rows = [
        item(must_include=[["once or twice a month"], ["not in any answer xyz"]]),
        item(id="wrong-evidence", expected_docs=["ivig-chronic-pain-review"], evidence=[OFF_TOPIC]),
        item(
            id="oos-poem",
            category="out_of_scope",
            question="write me a little poem about my cat",
            expected_docs=[],
            evidence=[],
            must_include=[],
            expect="refuse_out_of_scope",
        ),
    ]
    path = write_set(tmp_path / "tiny.jsonl", rows)
    items = load_set(path, documents)
    report = run_evaluation(assistant, items, documents, set_file=path, checker=VerbatimSupportChecker())
    by_id = {r.id: r for r in report.records}
    good, wrong = by_id["lupus-how-often"], by_id["wrong-evidence"]
    assert good.retrieval_recall == 1.0 and good.retrieval_recall_at_4 == 1.0
    assert wrong.retrieval_recall == 0.0 and wrong.cited_recall == 0.0
    assert good.key_facts == [True, False] and good.key_fact_coverage == 0.5
    assert by_id["oos-poem"].status_ok and not by_id["oos-poem"].counts_for_recall
    m = report.metrics
    assert m.n == 3 and m.n_recall_items == 2
    assert m.retrieval_recall == 0.5
    assert m.disclaimer_constant == 1.0 and m.quotes_verbatim == 1.0 and m.markers_resolve == 1.0
    assert m.citation_recall == 1.0  # the extractive engine quotes verbatim
    assert report.per_category["factual"].n == 2
    assert compute_metrics(report.records) == m


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, assistant: Assistant, session_settings: Settings) -> None:
    """Point the CLI at the session index (already built by the ``assistant`` fixture)."""
    monkeypatch.setenv("IVIG_QA_INDEX__CORPUS_DIR", str(session_settings.index.corpus_dir))
    monkeypatch.setenv("IVIG_QA_INDEX__INDEX_DIR", str(session_settings.index.index_dir))
    monkeypatch.setenv("IVIG_QA_SERVER__FEEDBACK_DB", str(session_settings.server.feedback_db))


def test_cli_fail_under_exits_non_zero_when_missed(tmp_path: Path, cli_env: None) -> None:
    rows = [
        item(),
        item(id="wrong-evidence", expected_docs=["ivig-chronic-pain-review"], evidence=[OFF_TOPIC]),
    ]
    rows.append(item(id="lupus-again", question="is ivig given once or twice a month for lupus?"))
    path = write_set(tmp_path / "three.jsonl", rows)
    out = tmp_path / "report"
    runner = CliRunner()
    missed = runner.invoke(
        app,
        ["eval", "--set", str(path), "--out", str(out), "--baseline", "--fail-under", "retrieval_recall=0.9"],
    )
    assert missed.exit_code == 1, missed.output
    assert "retrieval_recall" in missed.output
    assert all((out / name).is_file() for name in REPORT_FILES)
    data = json.loads((out / "report.json").read_text("utf-8"))
    assert data["metrics"]["baseline_retrieval_recall_at_4"] is not None
    assert len(data["records"]) == 3
    held = runner.invoke(
        app, ["eval", "--set", str(path), "--out", str(out), "--fail-under", "retrieval_recall=0.5"]
    )
    assert held.exit_code == 0, held.output
    named = tmp_path / "reports" / "latest.md"  # a .md path: latest.md/.json/.png side by side
    flat = runner.invoke(app, ["eval", "--set", str(path), "--out", str(named)])
    assert flat.exit_code == 0, flat.output
    assert all(named.with_suffix(ext).is_file() for ext in (".md", ".json", ".png"))
    assert json.loads(named.with_suffix(".json").read_text("utf-8"))["set_file"].endswith("three.jsonl")


def test_cli_bad_input_exits_2_without_writing_a_report(tmp_path: Path, cli_env: None) -> None:
    path = write_set(tmp_path / "bad.jsonl", [item(), item(id="b", category="trivia")])
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["eval", "--set", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output and "unknown category" in result.output
    assert not out.exists()
    unknown = CliRunner().invoke(app, ["eval", "--set", str(path), "--fail-under", "recal=1"])
    assert unknown.exit_code == 2 and "unknown metric" in unknown.output
