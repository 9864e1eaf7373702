"""Every text sent to a model: the answer prompt over numbered quotes, the judge's, doc2query's, and
triage's second opinion.

Only here are prompts worded; the engine and the judge build their messages with these functions.
Every request opens with the same ``SYSTEM_PROMPT`` (instructions and one worked example), so
llama.cpp reuses its evaluated prefix (the KV cache) from one request to the next, answer and
judge alike: only the quotes and the question are new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

from ivig_qa.text import collapse_space

if TYPE_CHECKING:
    from ivig_qa.engines.extractive import Candidate

# Short and plain for a 1.5B model; the example shows the form (copy numbers, one [n] per
# sentence, answer first, in the quotes' words and not the question's, its false claim not
# repeated: what the verifier keeps) on a topic outside the corpus, so none of its facts can leak
# into an answer unnoticed (the verifier would drop them anyway). A topic far from medicine
# (tomatoes) did worse on every dev set.
SYSTEM_PROMPT = """\
You help patients understand short quotes from medical sources.
Answer the question in 2 to 4 short, plain sentences, using only the numbered quotes.
Answer the question first, in the quotes' own words, not the question's. \
Copy numbers, doses and names exactly.
End every sentence with the number of the quote it comes from, like [1].
Do not add advice or facts that the quotes do not give. Do not repeat what the question claims.

Example.
Quotes:
[1] Most healthy adults can donate whole blood every 56 days.
[2] The donation itself usually takes about 10 minutes.
Question: since u can give blood every week, how long does it take
Answer: Most healthy adults can donate whole blood every 56 days [1]. \
The donation itself usually takes about 10 minutes [2]."""

# Generation stops if the model starts writing a new prompt section of its own.
STOP = ["\nQuestion:", "\nQuotes:", "\nExample"]

JUDGE_USER = (
    "Check a sentence against a quote.\nQuote: {passage}\nSentence: {statement}\n"
    "Does the quote say everything the sentence says? Reply with one word: yes or no."
)


# Triage's second opinion (``ivig_qa.policy.second_opinion``): is the message an emergency now?
# Its own system prompt, examples included, so llama.cpp keeps it evaluated between calls: only
# the message is new. The examples are worded afresh: none is a catalogue description or an
# emergency or symptom item of any set (the plain question is also in eval/spent/focus.jsonl,
# where it is never asked: it reads as general). Without them the 1.5B model called 45 of 83
# non-urgent triage-set messages urgent (AUC 0.86), with them 3 of 83 (AUC 0.98).
TRIAGE_SYSTEM = """\
Does the message describe an emergency happening now? Answer URGENT or OK.
URGENT: someone has a serious, sudden, severe, spreading or worsening problem right now.
OK: a question about treatment or side effects in general, a symptom that is over, or a mild symptom.

Message: my chest is tight and i cant get my breath since the drip started
Answer: URGENT
Message: what side effects can ivig cause?
Answer: OK
Message: bit of a headache and tired today after my infusion
Answer: OK
Message: my son wont wake up properly and is really floppy
Answer: URGENT
Message: i had hives last year during an infusion, it settled
Answer: OK
Message: the rash is spreading up my arms and my face is swelling
Answer: URGENT"""

TRIAGE_USER = "Message: {message}"


# doc2query (``ivig_qa.doc2query``): the questions each source sentence answers, generated once
# and cached. Short, for a 1.5B model; the example is off-corpus so no fact leaks in. A new
# version makes every cached entry stale.
DOC2QUERY_PROMPT_VERSION = "d2q-2"
DOC2QUERY_SYSTEM = """\
You write the questions a patient might type that one sentence from a medical source answers.
Write exactly 3 different short questions in plain everyday words, one per line.
The sentence must answer each question: ask about the specific fact it states (a number, a
result, a reason, a risk, a step), using its details. Never ask a general question the sentence
does not answer. No numbering, no answers, nothing else.

Example.
Sentence: Most healthy adults can donate whole blood every 56 days, and platelets more often.
Questions:
how often can i give blood?
how long do i have to wait between blood donations?
can i donate platelets more often than whole blood?"""

DOC2QUERY_USER = "Sentence: {sentence}\nQuestions:"


@dataclass
class Source:
    """A numbered quote in the prompt: verbatim text at ``start:end`` of its document.

    ``n`` is the quote's number in the answer too (the quotes are shown under the summary).
    """

    n: int
    candidate: Candidate
    start: int
    end: int
    text: str

    @property
    def title(self) -> str:
        return self.candidate.passage.chunk.title


def prompt_text(question: str, sources: list[Source]) -> str:
    """The user turn: the numbered quotes, then the question.

    No document titles: a small model states a title ("IVIG for Lupus") as a fact no quote
    supports, and every such sentence was dropped; the quotes alone are what can be cited.
    """
    lines = ["Quotes:", *(f"[{src.n}] {collapse_space(src.text)}" for src in sources)]
    lines += [f"Question: {question}", "Answer:"]
    return "\n".join(lines)


def answer_messages(question: str, sources: list[Source]) -> list:
    """The chat messages asking for a short cited answer from ``sources``."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [SystemMessage(SYSTEM_PROMPT), HumanMessage(prompt_text(question, sources))]


def judge_messages(statement: str, passage: str) -> list:
    """The chat messages asking whether ``passage`` supports ``statement`` (yes or no).

    They open with the answer's system prompt, so a judge call keeps the cached prefix.
    """
    from langchain_core.messages import HumanMessage, SystemMessage

    return [
        SystemMessage(SYSTEM_PROMPT),
        HumanMessage(JUDGE_USER.format(passage=collapse_space(passage), statement=statement)),
    ]


def triage_messages(message: str) -> list:
    """The chat messages asking whether ``message`` describes an emergency now (URGENT or OK)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [SystemMessage(TRIAGE_SYSTEM), HumanMessage(TRIAGE_USER.format(message=collapse_space(message)))]


def triage_examples() -> list[tuple[str, bool]]:
    """The second opinion's worked examples as (message, urgent), for the tests."""
    lines = TRIAGE_SYSTEM.splitlines()
    return [
        (m.removeprefix("Message: "), a == "Answer: URGENT")
        for m, a in pairwise(lines)
        if m.startswith("Message: ")
    ]
