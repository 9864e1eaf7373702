"""Every text the LLM engine sends a model: the answer prompt over numbered sources, and the judge's.

Only here are prompts worded; the engine and the judge build their messages with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ivig_qa.text import collapse_space

if TYPE_CHECKING:
    from ivig_qa.engines.extractive import Candidate

SYSTEM_PROMPT = (
    "You answer questions about IVIG for patients, using only the numbered source sentences.\n"
    "Write 2 to 4 short sentences in plain words. When several sources answer, say what each one says. "
    "Copy numbers, doses and names exactly as the sources write them. End each sentence with the "
    "number of its source, like [2]. Add nothing that the sources do not say."
)
# Generation stops if the model starts writing a new prompt section of its own.
STOP = ["\nQuestion:", "\nSources:"]

JUDGE_SYSTEM = "You check facts against a source text. Reply with one word: yes or no."
JUDGE_USER = (
    "Source: {passage}\n\nClaim: {statement}\n\n"
    "Does the source state everything the claim says? Reply yes or no."
)


@dataclass
class Source:
    """A numbered source span in the prompt: verbatim text at ``start:end`` of its document."""

    n: int
    candidate: Candidate
    start: int
    end: int
    text: str

    @property
    def title(self) -> str:
        return self.candidate.passage.chunk.title


def prompt_text(question: str, sources: list[Source]) -> str:
    """The user turn: the numbered sources under their document titles, then the question."""
    lines = ["Sources:"]
    title = None
    for src in sources:
        if src.title != title:
            title = src.title
            lines.append(f"From “{title}”:")
        lines.append(f"[{src.n}] {collapse_space(src.text)}")
    lines += ["", f"Question: {question}"]
    return "\n".join(lines)


def answer_messages(question: str, sources: list[Source]) -> list:
    """The chat messages asking for a short cited answer from ``sources``."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [SystemMessage(SYSTEM_PROMPT), HumanMessage(prompt_text(question, sources))]


def judge_messages(statement: str, passage: str) -> list:
    """The chat messages asking whether ``passage`` supports ``statement`` (yes or no)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [
        SystemMessage(JUDGE_SYSTEM),
        HumanMessage(JUDGE_USER.format(passage=collapse_space(passage), statement=statement)),
    ]
