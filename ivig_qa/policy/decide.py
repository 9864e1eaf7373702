"""The decision table: which kind of answer a message gets, and why.

Decided before anything is composed, from the message, its triage and its retrieval, so a
streamed answer is never replaced by a refusal at the end. Every outcome carries its reasons.

Order: a red flag or a severe symptom someone is having (urgent care) → a message mostly in
another language → a personal decision → a mild symptom now (answered, "tell your care team") →
a symptom told as past or gone (answered, "tell your care team") → scope (not in the
sources, or answered with the uncovered part named) → answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from ivig_qa.policy.language import Language
from ivig_qa.policy.reading import PAST, RESOLVED
from ivig_qa.policy.scope import Coverage
from ivig_qa.policy.triage import Triage, is_personal
from ivig_qa.types import Decision, Reason, Status


@dataclass(frozen=True)
class Thresholds:
    """How close the sources must be (``settings.policy``)."""

    min_support_score: float
    closest_passage_score: float


@dataclass(frozen=True)
class Findings:
    """Everything the decision reads, worked out by the assistant before composing."""

    message: str
    """The normalised message (spelling corrected)."""
    triage: Triage
    coverage: Coverage
    best_similarity: float
    injection: bool = False
    language: Language | None = None
    treatment: bool = True
    """The message names IVIG or its treatment (``ScopeChecker.names_treatment``)."""


def decide(f: Findings, thresholds: Thresholds) -> Decision:
    """The status for the message, with the reasons behind it."""
    noted = (Reason(id="injection.ignored", layer="injection"),) if f.injection else ()
    closeness = Reason(id="scope.closest_sentence", layer="retrieval", score=round(f.best_similarity, 4))
    if f.triage.is_urgent:
        return Decision(Status.URGENT_CARE, (*f.triage.reasons, *noted), injection=f.injection)
    close = f.best_similarity >= thresholds.min_support_score
    if f.language is not None:
        lang = Reason(
            id="language.other",
            layer="language",
            score=round(f.language.confidence, 4),
            detail=f.language.code,
        )
        if not f.language.english_part or not close or f.coverage.unknown:
            return Decision(
                Status.NOT_IN_SOURCES, (lang, *noted), injection=f.injection, language=f.language.code
            )
        return Decision(
            Status.ANSWERED, (lang, closeness, *noted), injection=f.injection, language=f.language.code
        )
    past = "past" if f.triage.reading in (RESOLVED, PAST) and f.triage.set_aside else ""
    seen = f.triage.reasons
    unknown = f.coverage.unknown
    # "should I stop my <unlisted drug> before IVIG?" is still a decision for the care team;
    # "which crypto should I buy?" (unknown subject, no treatment named) is simply not covered.
    # A decision asked about beside a mild symptom ("should I skip my dose? I've a cold") is
    # still a decision.
    if is_personal(f.message) and (not unknown or (close and f.treatment)):
        reasons = (Reason(id="personal.decision", layer="pattern"), *seen, closeness, *noted)
        return Decision(Status.PERSONAL_ADVICE, reasons, unknown, f.injection)
    unknown_reason = Reason(id="scope.unknown_terms", layer="scope", detail=", ".join(unknown))
    if f.triage.is_mild:
        # Never "not covered" for a symptom someone has: "tell your care team", what the sources
        # say about it when they are close, and the words they never mention named.
        scope = (unknown_reason,) if unknown else ()
        return Decision(
            Status.ANSWERED,
            (*f.triage.reasons, *scope, closeness, *noted),
            injection=f.injection,
            uncovered=unknown or f.coverage.uncovered,
            symptom="mild",
        )
    # A symptom told as past or gone ("a clot two years ago, it's gone: does it matter?") asks
    # about the writer's own story: answered with "tell your care team" when its words are
    # covered, even if no single sentence is close to the whole story.
    if past and not unknown and not close:
        described = Reason(id="scope.described_symptom", layer="scope")
        return Decision(Status.ANSWERED, (described, *seen, closeness, *noted), (), f.injection, symptom=past)
    if unknown or not close:
        reasons = (*((unknown_reason,) if unknown else ()), *seen, closeness, *noted)
        return Decision(Status.NOT_IN_SOURCES, reasons, unknown, f.injection)
    if f.coverage.uncovered:
        partial = Reason(id="scope.partial", layer="scope", detail=", ".join(f.coverage.uncovered))
        reasons = (partial, *seen, closeness, *noted)
        return Decision(
            Status.ANSWERED, reasons, (), f.injection, uncovered=f.coverage.uncovered, symptom=past
        )
    covered = Reason(id="scope.covered", layer="scope")
    return Decision(Status.ANSWERED, (covered, *seen, closeness, *noted), (), f.injection, symptom=past)
