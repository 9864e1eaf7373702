"""Triage's second opinion from the LLM (``policy.second_opinion``): who is asked, and that it can
only add urgency. LangChain's fake chat models stand in for the model here; the packaged model
reads the prompt's own examples in ``tests/test_llm.py`` (the real-model part).
"""

from __future__ import annotations

import threading

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import Field

from ivig_qa.assistant import Assistant
from ivig_qa.engines.llm.backends import LoadedModel
from ivig_qa.engines.llm.prompts import TRIAGE_SYSTEM, triage_examples, triage_messages
from ivig_qa.policy.second_opinion import SecondOpinion, tells, wanted
from ivig_qa.policy.triage import pattern_triager
from ivig_qa.types import Status


class Counting(FakeListChatModel):
    """A fake chat model that remembers the messages it was sent."""

    sent: list = Field(default_factory=list)

    def invoke(self, messages, *args, **kwargs):  # type: ignore[override]
        self.sent.append(messages)
        return super().invoke(messages, *args, **kwargs)


def opinion(reply: str, wait_s: float = 5.0) -> SecondOpinion:
    return SecondOpinion(LoadedModel(Counting(responses=[reply]), "fake"), wait_s)


@pytest.mark.parametrize(
    ("message", "asked"),
    [
        ("how often is ivig given for lupus", False),  # a question: nothing happening to anyone
        ("what should i watch for after my first infusion", False),
        ("i had a rash two years ago after ivig, it went away", False),  # past
        ("my lips are swelling and i cant breathe", False),  # urgent already: nothing to add
        ("my arm is a little sore where the drip went in", True),  # a mild symptom now
        ("my husband is acting odd since the infusion", True),  # tells of now, names no symptom
        ("my mother seems not herself tonight, she had ivig this morning", True),
    ],
)
def test_only_a_message_telling_of_now_without_a_red_flag_is_asked(message: str, asked: bool) -> None:
    assert wanted(message, pattern_triager().assess(message)) is asked


def test_a_statement_tells_and_a_question_does_not() -> None:
    assert tells("my dad is not himself, can ivig do that?")
    assert not tells("can ivig do that? how often is it given?")


def test_urgent_from_the_model_makes_the_triage_urgent() -> None:
    message = "my husband is acting odd since the infusion"
    triage = pattern_triager().assess(message)
    assert not triage.is_urgent
    second = opinion("URGENT")
    reviewed = second.review(message, triage)
    assert reviewed.is_urgent and reviewed.reading == "now"
    assert reviewed.reasons[0].id == "urgent.second_opinion" and reviewed.reasons[0].layer == "llm"
    sent = second.model.chat.sent[0]
    assert sent[0].content == TRIAGE_SYSTEM and sent[1].content.endswith(message)


@pytest.mark.parametrize("reply", ["OK", "ok.", "I am not sure"])
def test_anything_but_urgent_leaves_triage_as_it_was(reply: str) -> None:
    message = "my arm is a little sore where the drip went in"
    triage = pattern_triager().assess(message)
    reviewed = opinion(reply).review(message, triage)
    assert reviewed.is_mild and reviewed.mild == triage.mild  # never a veto, never a downgrade
    assert reviewed.reviewed[0].id == "second_opinion.not_urgent"
    assert reviewed.reasons[-1].id == "second_opinion.not_urgent"


def test_a_plain_question_costs_no_model_call() -> None:
    second = opinion("URGENT")
    message = "how often is ivig given for lupus"
    triage = pattern_triager().assess(message)
    assert second.review(message, triage) is triage
    assert second.model.chat.sent == []


def test_a_failing_or_busy_model_leaves_triage_alone_and_says_so() -> None:
    class Broken(FakeListChatModel):
        def invoke(self, *args, **kwargs):  # type: ignore[override]
            raise ConnectionError("server down")

    message = "my husband is acting odd since the infusion"
    triage = pattern_triager().assess(message)
    broken = SecondOpinion(LoadedModel(Broken(responses=["x"]), "broken"), 5.0)
    assert broken.review(message, triage).reviewed[0].id == "second_opinion.unavailable"

    busy = opinion("URGENT", wait_s=0.05)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with busy.model.lock:
            held.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(5)
    try:
        reviewed = busy.review(message, triage)
    finally:
        release.set()
        worker.join()
    assert not reviewed.is_urgent and reviewed.reviewed[0].id == "second_opinion.unavailable"
    assert busy.model.chat.sent == []


def test_the_model_reads_a_bounded_part_of_a_long_message() -> None:
    second = opinion("OK")
    message = "my dad is not himself. " + "he had a long day. " * 500
    second.review(message, pattern_triager().assess(message))
    assert len(second.model.chat.sent[0][1].content) <= 2000 + len("Message: ")


def test_auto_asks_only_beside_the_llm_engine(assistant: Assistant) -> None:
    settings = assistant.settings
    assert SecondOpinion.from_settings(settings) is None  # extractive engine: auto is off
    assert SecondOpinion.from_settings(settings.updated(second_opinion="off", engine="llm")) is None
    assert assistant.second_opinion is None


def test_the_assistant_answers_urgent_care_when_the_second_opinion_says_so(assistant: Assistant) -> None:
    a = Assistant(assistant.settings, assistant.store, assistant.retriever)
    message = "my husband is acting odd since the infusion"
    assert a.ask(message).status != Status.URGENT_CARE
    a.second_opinion = opinion("URGENT")
    answer = a.ask(message)
    assert answer.status == Status.URGENT_CARE
    assert "urgent.second_opinion" in [r.id for r in answer.reasons]
    a.second_opinion = opinion("URGENT")
    assert a.ask("how often is ivig given for lupus").status == Status.ANSWERED


def test_the_prompts_examples_are_read_back_as_written() -> None:
    examples = triage_examples()
    assert len(examples) >= 6 and {u for _, u in examples} == {True, False}
    message = triage_messages("my dad  is\nnot himself")[1].content
    assert message == "Message: my dad is not himself"


def test_the_eval_report_keeps_the_second_opinions_reasons(assistant: Assistant, tmp_path) -> None:
    import json

    from ivig_qa.evaluation.checks import make_checker
    from ivig_qa.evaluation.dataset import load_documents, load_set
    from ivig_qa.evaluation.runner import run_evaluation

    item = {
        "id": "so-1",
        "category": "emergency",
        "question": "my husband is acting odd since the infusion",
        "turns": [],
        "expected_docs": [],
        "evidence": [],
        "must_include": [],
        "expect": "urgent_care",
    }
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(item) + "\n", "utf-8")
    a = Assistant(assistant.settings, assistant.store, assistant.retriever)
    a.second_opinion = opinion("URGENT")
    documents = load_documents(assistant.settings.index.corpus_dir)
    report = run_evaluation(
        a, load_set(path, documents), documents, set_file=path, checker=make_checker("verbatim")
    )
    record = report.records[0]
    assert record.status == "urgent_care" and "urgent.second_opinion@llm" in record.reasons


class Tokenizer:
    """llama.cpp's tokenize/detokenize over a fixed vocabulary."""

    def __init__(self, pieces: dict[bytes, list[bytes]]) -> None:
        self.pieces = pieces

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[bytes]:
        return self.pieces[text]

    def detokenize(self, tokens: list[bytes]) -> bytes:
        return b"".join(tokens)


@pytest.mark.parametrize(
    ("pieces", "budget"),
    [
        ({b"URGENT": [b"UR", b"G", b"ENT"]}, (1, "UR")),  # Qwen: the first token decides
        ({b"URGENT": [b"URGENT"]}, (1, "URGENT")),
        ({b"URGENT": [b" ", b"URGENT"]}, (3, "UR")),  # a first token that says nothing
        ({b"URGENT": [b"O", b"URGENT"]}, (3, "UR")),  # one that "OK" starts with too
    ],
)
def test_one_token_is_asked_for_when_it_tells_urgent_from_ok(pieces: dict, budget: tuple) -> None:
    from types import SimpleNamespace

    from ivig_qa.policy.second_opinion import reply_budget

    assert reply_budget(LoadedModel(SimpleNamespace(client=Tokenizer(pieces)), "fake")) == budget  # type: ignore[arg-type]
    assert reply_budget(LoadedModel(Counting(responses=["OK"]), "fake")) == (3, "UR")  # a server's


def test_the_benchs_symptoms_told_are_read_by_the_second_opinion() -> None:
    """`ivig-qa bench` times the first visible text of the catalogue's mild descriptions: each one
    is a symptom told now, which the second opinion reads before anything is shown."""
    from ivig_qa.bench.runner import mild_symptoms_told

    told = mild_symptoms_told()
    assert len(told) >= 5
    triager = pattern_triager()
    assert all(wanted(message, triager.assess(message)) for message in told), told


class Budgeted(Counting):
    """A fake model with Qwen's tokenizer that writes only as many tokens as it is allowed."""

    client: object = Field(default_factory=lambda: Tokenizer({b"URGENT": [b"UR", b"G", b"ENT"]}))
    pieces: list = Field(default_factory=list)  # the reply, token by token

    def invoke(self, messages, *args, max_tokens: int = 99, **kwargs):  # type: ignore[override]
        self.sent.append(max_tokens)
        from langchain_core.messages import AIMessage

        return AIMessage("".join(self.pieces[:max_tokens]))


@pytest.mark.parametrize(
    ("pieces", "urgent", "asked_for"),
    [
        (["UR", "G", "ENT"], True, [1]),
        (["OK"], False, [1]),
        (["**", "UR", "GENT**"], True, [1, 3]),  # a first token that is neither: read on
        (["**", "OK", "**"], False, [1, 3]),
    ],
)
def test_a_first_token_that_is_no_verdict_is_read_on(pieces: list, urgent: bool, asked_for: list) -> None:
    model = Budgeted(responses=["unused"], pieces=pieces)
    second = SecondOpinion(LoadedModel(model, "fake"), wait_s=5.0)
    assert (second.reply_tokens, second.urgent_start) == (1, "UR")
    assert second._ask("my arm is a bit sore where the drip was") is urgent
    assert model.sent == asked_for
