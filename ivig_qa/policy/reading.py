"""How each clause of a message reads (now, past, resolved, general) and whether it says a symptom is
severe now.

A message often holds several things: a question about dosing and, in passing, a child who just
fainted; an old clot that is gone and a new treatment. So a red flag is judged by the clause that
carries it, never by the message as a whole:

* now — the carrying clause says it is happening (present tense, "just", "still", "right now",
  or a severity modifier): urgency wins whatever the rest of the message says;
* past — the carrying sentence is anchored in the past ("two years ago", "last month");
* resolved — the carrying sentence, from that clause on, or a later sentence that refers back
  ("it's all gone now"), says it has gone;
* general — the carrying sentence asks a general or hypothetical question ("can IVIG cause…",
  "what if he…");
* unsure — none of these: urgency wins.

The severity signal (``data/severity.toml``): a clause with a modifier of severity, suddenness,
spreading or persistence ("won't stop", "for 10 minutes", "getting worse", "worst ever", "can't
stand"), describing a symptom in that clause or the one before it, and reading as now → urgent,
for any symptom, named by the catalogue or not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from ivig_qa import data
from ivig_qa.policy.red_flags import Catalogue
from ivig_qa.text import WORD
from ivig_qa.types import Reason

NOW, GENERAL, RESOLVED, PAST, UNSURE = "now", "general", "resolved", "past", "unsure"
SET_ASIDE = frozenset({GENERAL, RESOLVED, PAST})
"""Readings under which a red flag is not urgent (answered; "tell your care team" if a symptom)."""

_SENTENCE = re.compile(r"[^.!?;\n]+[.!?;]*")
# "so" joins clauses only before a subject ("it hurts so i took…"); "i'm so tired" is one clause.
_CLAUSE = re.compile(
    r",\s+|\s+-+\s+|\s+(?:and|but|because|plus|then|also|though|although)\s+"
    r"|\s+so\s+(?=(?:i|i'm|im|we|you|he|she|they|it|my|his|her|their|our|the|that|this)\b)"
)
_JOINS = re.compile(r",|and|then|plus|also")
_SUBJECT = re.compile(
    r"(i|i'm|im|i've|ive|we|you|he|she|they|it|its|it's|this|that|there|my|his|her|their|our|the|a|an|"
    r"\w+'s)\b"
)
_NEGATED = re.compile(r"\b(not|no|never|n't|isnt|arent|wasnt)\W+(\w+\W+)?$")
# A clause that asks: a question word, an auxiliary or a request first.
_QUESTION = re.compile(
    r"^\W*(what|whats|which|when|where|why|how|who|whom|whose|can|could|is|are|am|does|do|did|will|"
    r"would|should|shall|may|might|must|has|have|was|were|any|write|tell|give|explain|list|"
    r"describe|show|compare|recommend|suggest|help|please)\b"
)
# A clause about a person: a pronoun, or a relative ("mum", "my husband").
_PERSON_FIRST = re.compile(
    r"^\W*(i|i'm|im|i've|ive|we|he|she|they|he's|she's|my|our|his|her|their|"
    r"mum|mom|mother|dad|father|son|daughter|husband|wife|partner|baby|grandma|grandpa|nan|toddler)\b"
)
_HAS = re.compile(r"\b(has|have|had|with|got)\b")
_CONDITIONAL = re.compile(r"\b(if|in case|whether|what if)\b.*$")
_RIGHT_NOW = re.compile(r"\b(right now|currently|at the moment|as we speak|still)\b")
_REFERS_BACK = re.compile(r"\b(it|its|it's|they|that|this|all|everything|both|those)\b")


@dataclass(frozen=True)
class Clause:
    """One clause of a message, with its offsets in the (folded) message and its sentence."""

    text: str
    start: int
    end: int
    sentence: int
    continues: bool = False
    """Joined to the clause before by "and", "then" or a comma with no subject of its own
    ("…just went pale and passed out"): it shares that clause's tense and person."""


def split(text: str) -> list[Clause]:
    """The clauses of ``text``, sentence by sentence (split on commas, dashes and conjunctions)."""
    out: list[Clause] = []
    for n, sentence in enumerate(_SENTENCE.finditer(text)):
        base, body = sentence.start(), sentence.group()
        cut, joined = 0, False
        for sep in [*_CLAUSE.finditer(body), None]:
            end = sep.start() if sep else len(body)
            piece = body[cut:end]
            stripped = piece.strip(" .!?;")
            if stripped:
                lead = piece.index(stripped[0])
                # A question after a comma asks; it does not continue the clause before it
                # ("my son is starting ivig, what are the signs of an allergic reaction").
                continues = (
                    joined and bool(out) and not _SUBJECT.match(stripped) and not _QUESTION.match(stripped)
                )
                out.append(
                    Clause(stripped, base + cut + lead, base + cut + lead + len(stripped), n, continues)
                )
            joined = bool(sep) and _JOINS.fullmatch(sep.group().strip().lower() or ",") is not None
            cut = sep.end() if sep else len(body)
    return out


def covering(clauses: Sequence[Clause], start: int, end: int) -> list[int]:
    """The clauses that overlap ``text[start:end]`` (at least one: the nearest before it)."""
    found = [i for i, c in enumerate(clauses) if c.start < max(end, start + 1) and c.end > start]
    if found or not clauses:
        return found
    return [max((i for i, c in enumerate(clauses) if c.start <= start), default=0)]


@dataclass(frozen=True)
class Modifier:
    id: str
    patterns: tuple[re.Pattern[str], ...]
    examples: tuple[str, ...]
    counter_examples: tuple[str, ...]
    mild_cancels: bool = False
    """A clause worded as mild ("a bit", "slight") cancels this modifier."""
    condition_cancels: bool = False
    """A clause that says someone has a condition ("has severe pain from a nerve disease")
    cancels this modifier: a diagnosis, not an event."""
    reads_now: bool = True
    """On its own it makes a clause read as happening now ("won't stop", "getting worse"); False
    for a description that a general question uses too ("what causes severe headaches")."""

    def search(self, text: str) -> re.Match[str] | None:
        for p in self.patterns:
            for m in p.finditer(text):
                if not _NEGATED.search(text[max(0, m.start() - 12) : m.start()]):
                    return m
        return None


@dataclass(frozen=True)
class Severity:
    """The reviewed modifiers and symptom words of ``data/severity.toml``."""

    modifiers: tuple[Modifier, ...]
    symptom_words: frozenset[str]
    min_similarity: float
    compound_heads: tuple[str, ...] = ()

    @classmethod
    @cache
    def load(cls) -> Severity:
        raw = data.load("severity.toml")
        modifiers = tuple(
            Modifier(
                m["id"],
                tuple(re.compile(p, re.IGNORECASE) for p in m["patterns"]),
                tuple(m.get("examples", [])),
                tuple(m.get("counter_examples", [])),
                bool(m.get("mild_cancels", False)),
                bool(m.get("condition_cancels", False)),
                bool(m.get("reads_now", True)),
            )
            for m in raw["modifier"]
        )
        symptoms = raw["symptoms"]
        return cls(
            modifiers,
            frozenset(symptoms["words"]),
            float(symptoms["min_similarity"]),
            tuple(symptoms.get("compound_heads", ())),
        )

    def modifier(
        self, text: str, mild: re.Match[str] | None = None, reading_now: bool = False
    ) -> tuple[Modifier, re.Match[str]] | None:
        """The first modifier in ``text``; ``mild``: the text's mild wording, if any;
        ``reading_now``: only those that make a clause read as now (``Modifier.reads_now``)."""
        return next(
            (
                (m, found)
                for m in self.modifiers
                if not (mild and m.mild_cancels)
                and (m.reads_now or not reading_now)
                and (found := m.search(text))
            ),
            None,
        )

    def names_symptom(self, text: str) -> bool:
        """A symptom word, or a compound ending in a symptom head ("nosebleed", "backache")."""
        words = set(WORD.findall(text))
        return bool(words & self.symptom_words) or any(
            w.endswith(head) and len(w) > len(head) for w in words for head in self.compound_heads
        )


@cache
def conditions() -> frozenset[str]:
    """The words that name a condition the sources are about (``data/topics.toml``), but not the
    topics that are a person or a situation (children, pregnancy, surgery…)."""
    topics = data.load("topics.toml")["topics"]
    people = {"children", "older", "pregnancy", "nursing", "surgery", "vaccines"}
    words = {w for t, names in topics.items() if t not in people for w in names.split()}
    return frozenset(words - Severity.load().symptom_words - {"chronic", "complex", "regional"})


class Reader:
    """Reads the clauses of one message (folded) against the catalogue's signals."""

    def __init__(self, text: str, catalogue: Catalogue, severity: Severity | None = None) -> None:
        self.text = text
        self.catalogue = catalogue
        self.severity = severity or Severity.load()
        self.clauses = split(text)
        spans: dict[int, list[int]] = {}
        for c in self.clauses:
            spans.setdefault(c.sentence, [c.start, c.end])[1] = c.end
        self.sentences = {n: text[a:b] for n, (a, b) in spans.items()}

    def sentence_of(self, i: int) -> str:
        return self.sentences[self.clauses[i].sentence]

    def _resolved_after(self, i: int) -> re.Match[str] | None:
        """A resolution from clause ``i`` to the end of its sentence, or in a later sentence that
        refers back ("it's all gone now")."""
        c = self.clauses[i]
        sentence_end = max(x.end for x in self.clauses if x.sentence == c.sentence)
        rest = self.text[c.start : sentence_end]
        found = self.catalogue.resolved.search(rest)
        if found:
            return found
        for n, sentence in self.sentences.items():
            if n > c.sentence and _REFERS_BACK.search(sentence):
                found = self.catalogue.resolved.search(sentence)
                if found:
                    return found
        return None

    def chain(self, i: int) -> str:
        """Clause ``i`` with the clauses it continues ("last month I got a headache and …")."""
        text = self.clauses[i].text
        while self.clauses[i].continues and i > 0:
            i -= 1
            text = f"{self.clauses[i].text} {text}"
        return text

    def condition(self, i: int, severity: bool = True) -> re.Match[str] | None:
        """Clause ``i`` says someone has a condition, or gets something again and again, rather
        than that something is happening: "keeps getting chest infections", "has CRPS".
        ``severity``: a severity modifier on the clause says it is happening (not a condition)."""
        text = self.clauses[i].text
        if severity and self.severity.modifier(text):
            return None
        found = self.catalogue.condition.search(text)
        if found:
            return found
        has = _HAS.search(text)
        if has and set(WORD.findall(text[has.end() :])) & conditions():
            return has
        return None

    def group(self, i: int) -> str:
        """Clause ``i`` with every clause it is joined to without a subject of its own, before and
        after ("she has a low fever and feels a bit rough"): one description of one person."""
        text = self.chain(i)
        j = i + 1
        while j < len(self.clauses) and self.clauses[j].continues:
            text = f"{text} {self.clauses[j].text}"
            j += 1
        return text

    def tells(self) -> bool:
        """The message only tells: no question mark, and no sentence or clause opens with a
        question word, an auxiliary or a request ("write me…", "tell me…")."""
        return "?" not in self.text and not any(_QUESTION.search(c.text) for c in self.clauses)

    def reports_beside(self, i: int) -> bool:
        """Clause ``i`` tells of a person (opens with one, asks nothing) in a sentence of more
        than one clause: "my husband collapsed" in "what do i do, my husband collapsed"."""
        c = self.clauses[i]
        shared = sum(x.sentence == c.sentence for x in self.clauses) > 1
        return shared and bool(_PERSON_FIRST.match(c.text)) and not _QUESTION.match(c.text)

    def reports(self, i: int) -> bool:
        """Clause ``i`` reports something someone has now and ties it to the treatment in time
        ("i have a metallic taste since my infusion"), and is not itself a question, a plan or a
        change for the better (``[reported]``)."""
        cat = self.catalogue
        text = self.clauses[i].text
        return bool(
            cat.reported.search(text)
            and cat.now.search(self.chain(i))
            and not _QUESTION.search(text)
            and not cat.reported_unless.search(text)
            and self.clause(i)[0] not in SET_ASIDE
        )

    def reassured(self, i: int) -> bool:
        """Clause ``i`` itself states that something is normal ("eating fine", "peeing normal amounts")."""
        text = self.clauses[i].text
        if _QUESTION.match(text):  # "is it ok that i haven't peed" asks whether it is normal
            return False
        found = self.catalogue.reassurance.search(text)
        return bool(found) and not _NEGATED.search(text[max(0, found.start() - 16) : found.start()])

    def clause(self, i: int, severity: bool = True) -> tuple[str, Reason]:
        """How clause ``i`` reads; ``severity``: a severity modifier on it counts as now."""
        cat = self.catalogue
        c = self.clauses[i]
        body = self.chain(i)  # "…just went pale and passed out"
        for pattern in cat.resolved.patterns:
            body = pattern.sub(" ", body)
        # What follows "if" is hypothetical ("what do I do if my child has a seizure"), unless
        # the clause also says it is happening right now.
        if not _RIGHT_NOW.search(body):
            body = _CONDITIONAL.sub(r" \1", body)
        strong = cat.now.search(body)
        if strong and not (cat.past.search(body) and not cat.resolved_unless.search(body)):
            return NOW, Reason(id="triage.now", layer="pattern", detail=strong.group())
        if severity:
            found = self.severity.modifier(c.text, cat.mild_wording.search(c.text), reading_now=True)
            if found:
                return NOW, Reason(id="triage.now", layer="pattern", detail=found[1].group())
        sentence = self.sentence_of(i)
        past = cat.past.search(self.chain(i))
        if past:
            return PAST, Reason(id="triage.past", layer="pattern", detail=past.group())
        resolved = self._resolved_after(i)
        if resolved:
            return RESOLVED, Reason(id="triage.resolved", layer="pattern", detail=resolved.group())
        # A clause that reports something about a person beside a question ("what do i do, my
        # husband collapsed") is read as general only on its own words, not on its sentence's.
        general = cat.general.search(c.text if self.reports_beside(i) else sentence)
        if general:
            return GENERAL, Reason(id="triage.general_question", layer="pattern", detail=general.group())
        weak = cat.weak_now.search(self.text)
        if weak:
            return NOW, Reason(id="triage.now", layer="pattern", detail=weak.group())
        return UNSURE, Reason(id="triage.unsure", layer="pattern")

    def carried(self, indices: Sequence[int]) -> tuple[str, Reason]:
        """How a sign carried by these clauses reads: now (or unsure) if any clause says so."""
        readings = [self.clause(i) for i in indices] or [
            (UNSURE, Reason(id="triage.unsure", layer="pattern"))
        ]
        urgent = [r for r in readings if r[0] not in SET_ASIDE]
        return (urgent or readings)[0]

    def message(self) -> tuple[str, Reason]:
        """How the message reads as a whole: now if any clause is, else its first reading."""
        return self.carried(range(len(self.clauses)))

    def severe_now(self, symptomatic: Callable[[list[int]], bool]) -> list[Reason]:
        """``urgent.severe_now`` for each clause with a severity modifier that describes a symptom
        (``symptomatic`` of it and the clause before it in its sentence) happening now."""
        found: list[Reason] = []
        for i, c in enumerate(self.clauses):
            hit = self.severity.modifier(c.text, self.catalogue.mild_wording.search(c.text))
            if not hit:
                continue
            unit = [i - 1, i] if i and self.clauses[i - 1].sentence == c.sentence else [i]
            named = any(self.severity.names_symptom(self.clauses[j].text) for j in unit)
            if not (named or symptomatic(unit)):
                continue
            read, _ = self.clause(i, severity=False)
            if read in SET_ASIDE:
                continue
            modifier, match = hit
            if modifier.condition_cancels and self.condition(i, severity=False):
                continue
            found.append(
                Reason(
                    id="urgent.severe_now",
                    layer="pattern",
                    detail=f"severity.{modifier.id}: {match.group()} (“{c.text}”)",
                )
            )
        return found
