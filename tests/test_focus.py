"""Focused answers: quotable units, answer types, follow-up completeness, the ranker, focus metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivig_qa import data
from ivig_qa.assistant import Assistant
from ivig_qa.chunking import ChunkerSettings, chunk_corpus
from ivig_qa.conversation import condense, is_complete
from ivig_qa.corpus import context_spans, load_corpus, reads_as_title
from ivig_qa.engines.ranking import FEATURES, answer_types, default_ranker
from ivig_qa.evaluation.dataset import EvalItem, Evidence, SetItem, TextRange
from ivig_qa.evaluation.focus import answer_words, is_labelled, score_focus
from ivig_qa.text import markers
from ivig_qa.types import Citation, Message

# Lines of the bundled corpus that are headings, titles, bylines or reference lines.
NOT_STATEMENTS = [
    "J Clin Immunol. 2010 May;30 Suppl 1:S103-8",
    "Intravenous Immune Globulin (IVIG)",
    "Chronic Fatigue Syndrome (ME/CFS)",
    "IVIG in Autoimmune SFPN (AsSFPN)",
    "IVIG in Postural Orthostatic Tachycardia Syndrome (POTS)",
    "The Case for IVIG Treatment in Chronic Fatigue Syndrome",
    "Teitelbaum, J., From Fatigued to Fantastic, Avery Press.",
    "The above is an excerpt from “The Lupus Encyclopedia”",
    "This is a preliminary draft for the 2nd edition",
    "Side Effects / Precautions",
    "Nuisance side effects",
]
# …and statements that look like list items or captions but say something: they stay quotable.
STATEMENTS = [
    "Elevated liver enzymes",
    "Kidney failure = rare",
    "It can take up to 100,000 healthy blood donors to produce one dose of IVIG!",
    "Usually given as an intravenous (IV) infusion once or twice a month.",
]


@pytest.fixture(scope="module")
def sentences(corpus_dir: Path) -> list[str]:
    chunks = chunk_corpus(load_corpus(corpus_dir).documents, ChunkerSettings(700, 1))
    return [s.text for c in chunks for s in c.sentences]


def test_no_heading_or_byline_of_the_corpus_is_quotable(corpus_dir: Path, sentences: list[str]) -> None:
    for line in NOT_STATEMENTS:
        assert not any(line in s for s in sentences), line
    for line in STATEMENTS:
        assert any(line in s for s in sentences), line
    docs = load_corpus(corpus_dir).documents
    chunks = chunk_corpus(docs, ChunkerSettings(700, 1))
    for doc in docs:
        context = context_spans(doc)
        assert context, doc.doc_id
        for chunk in (c for c in chunks if c.doc_id == doc.doc_id):
            for s in chunk.sentences:
                assert not any(s.start < c.end and c.start < s.end for c in context), s.text


def test_title_like_lines_are_told_from_prose() -> None:
    assert reads_as_title("Teitelbaum, J., From Fatigued to Fantastic, Avery Press. 2007.")
    assert reads_as_title("J Clin Immunol. 2010 May;30 Suppl 1:S103-8. doi: 10.1007/s10875-010-9403-8.")
    assert not reads_as_title("A drug made from up to 100,000 healthy volunteers!")
    assert not reads_as_title("Dr. Chia has found it helpful for fibromyalgia patients.")


@pytest.mark.parametrize("kind", [t.name for t in answer_types()])
def test_answer_type_examples(kind: str) -> None:
    raw = next(t for t in data.load("answer_types.toml")["type"] if t["name"] == kind)
    rule = next(t for t in answer_types() if t.name == kind)
    for question in raw["asks"]:
        assert rule.asked_by(question), question
    for question in raw["does_not_ask"]:
        assert not rule.asked_by(question), question
    for sentence in raw["states"]:
        assert rule.sentence.search(sentence), sentence
    for sentence in raw["does_not_state"]:
        assert not rule.sentence.search(sentence), sentence


def test_follow_up_examples() -> None:
    raw = data.load("follow_ups.toml")
    for example in raw["complete"]:
        assert is_complete(example["message"]), example["message"]
    for example in raw["incomplete"]:
        assert not is_complete(example["message"]), example["message"]


def test_complete_message_after_other_turns_is_not_rewritten() -> None:
    history = [
        Message(role="user", content="what are the side effects of ivig for lupus?"),
        Message(role="user", content="and how often is it given?"),
    ]
    assert condense("can I get the flu shot", history) == "can I get the flu shot"
    assert condense("and for kids?", history) != "and for kids?"


def test_self_contained_question_keeps_its_own_words_through_the_assistant(assistant: Assistant) -> None:
    history: list[dict[str, str]] = []
    for turn in ("how often is ivig given for lupus?", "do they check bloodwork while on it?"):
        first = assistant.ask(turn, history)
        history += [{"role": "user", "content": turn}, {"role": "assistant", "content": first.answer}]
    answer = assistant.ask("can I get the flu shot while on ivig?", history)
    assert answer.standalone_question == "can I get the flu shot while on ivig?"
    assert "inactivated vaccines" in answer.answer
    fragment = assistant.ask("and for kids?", history)
    assert fragment.standalone_question.startswith("and for kids? (follow-up to:")


def test_the_fitted_ranker_names_known_features() -> None:
    ranker = default_ranker()
    assert set(ranker.names) <= set(FEATURES)
    assert len(ranker.weights) == len(ranker.names) and (ranker.scale > 0).all()


def test_answer_leads_with_the_answer_then_groups_the_rest(assistant: Assistant) -> None:
    answer = assistant.ask("how often is ivig given for lupus?")
    body = answer.answer.split("\n", 1)[1].lstrip("\n")
    first = body.splitlines()[0]
    assert first.startswith("- ") and "once or twice a month" in first and first.endswith("[1]")
    assert markers(answer.answer) == sorted(markers(answer.answer))
    assert len(answer.citations) <= assistant.settings.answer.max_answer_sentences
    by_doc = {c.doc_id: c for c in answer.citations}
    assert by_doc["ivig-lupus"].publisher and by_doc["ivig-lupus"].kind == "patient-education book excerpt"


def test_a_leading_label_is_not_quoted(assistant: Assistant) -> None:
    answer = assistant.ask("did controlled trials find ivig reduces pain in complex regional pain syndrome?")
    quotes = [c.quote for c in answer.citations if c.doc_id == "ivig-chronic-pain-review"]
    assert any(q.startswith("Evidence from RCTs") for q in quotes), quotes
    assert not any(q.startswith(("Results:", "Conclusion:", "Introduction:")) for q in quotes)


# -- the focus metrics -------------------------------------------------------------------------
DOC = "Alpha one two. Beta three four. Gamma five six."


def _item(relevant: list[str], supporting: list[str]) -> EvalItem:
    def located(texts: list[str]) -> tuple[Evidence, ...]:
        return tuple(Evidence(t, (TextRange("d", DOC.index(t), DOC.index(t) + len(t)),)) for t in texts)

    set_item = SetItem(
        id="x", category="factual", question="q", turns=[], expected_docs=["d"], evidence=[],
        must_include=[], expect="answer",
    )  # fmt: skip
    return EvalItem(set_item, 1, (), located(relevant), located(supporting))


def _cite(n: int, text: str) -> Citation:
    start = DOC.index(text)
    return Citation(
        n=n, doc_id="d", title="t", chunk_id="d#0", text=DOC, quote=text, start=start,
        end=start + len(text), score=1.0,
    )  # fmt: skip


def test_quote_precision_counts_sentences_and_lead_needs_a_relevant_first_quote() -> None:
    item = _item(["Beta three four."], ["Gamma five six."])
    joined = _cite(1, "Alpha one two. Beta three four.")
    focus = score_focus(item, "- Alpha one two. Beta three four. [1]", [joined], {"d": DOC}, {})
    assert focus.quoted_sentences == 2 and focus.quote_precision == 0.5 and focus.lead_relevant
    off = score_focus(
        item,
        "- Gamma five six. [1]\n- Beta three four. [2]",
        [_cite(1, "Gamma five six."), _cite(2, "Beta three four.")],
        {"d": DOC},
        {"d": (TextRange("d", 0, 5),)},
    )
    assert off.quote_precision == 1.0 and off.lead_relevant is False and off.context_quoted == []


def test_labelled_overlap_and_answer_words() -> None:
    label = [TextRange("d", 10, 20)]
    assert is_labelled(TextRange("d", 12, 18), label)  # inside a label
    assert is_labelled(TextRange("d", 0, 40), label)  # holds the whole label (a part of it)
    assert not is_labelled(TextRange("d", 18, 60), label)  # touches it only
    assert answer_words("**Title**\n- One two three. [1]\n- Four [2]") == 5
