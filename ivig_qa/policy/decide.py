"""The decision table: which kind of answer a message gets, and why.

Decided before anything is composed, from the message and its retrieval, so a streamed
answer is never replaced by a refusal at the end. Every outcome carries its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from ivig_qa.policy.scope import ScopeChecker
from ivig_qa.policy.triage import has_injection, is_personal, urgent_rule
from ivig_qa.types import Decision, Reason, Status


@dataclass(frozen=True)
class Thresholds:
    """How close the sources must be (``settings.policy``)."""

    min_support_score: float
    closest_passage_score: float


def decide(
    message: str, words: str, best_similarity: float, scope: ScopeChecker, thresholds: Thresholds
) -> Decision:
    """The status for ``message`` (``words``: its cleaned-up text; ``best_similarity``: the
    closest quotable sentence's similarity to the question)."""
    injection = has_injection(message)
    noted = (Reason(id="injection.ignored", layer="pattern"),) if injection else ()
    rule = urgent_rule(message)
    if rule is not None:
        return Decision(Status.URGENT_CARE, (Reason(id=rule, layer="pattern"), *noted), injection=injection)
    unknown = tuple(scope.unknown_subjects(words))
    close = best_similarity >= thresholds.min_support_score
    closeness = Reason(id="scope.closest_sentence", layer="retrieval", score=round(best_similarity, 4))
    unknown_reason = Reason(id="scope.unknown_terms", layer="scope", detail=", ".join(unknown))
    # "should I stop my <unlisted drug> before IVIG?" is still a decision for the care team;
    # "which crypto should I buy?" (unknown subject, nothing close) is simply not covered.
    if is_personal(message) and (close or not unknown):
        reasons = (Reason(id="personal.decision", layer="pattern"), closeness, *noted)
        return Decision(Status.PERSONAL_ADVICE, reasons, unknown, injection)
    if unknown or not close:
        reasons = (*((unknown_reason,) if unknown else ()), closeness, *noted)
        return Decision(Status.NOT_IN_SOURCES, reasons, unknown, injection)
    covered = Reason(id="scope.covered", layer="scope")
    return Decision(Status.ANSWERED, (covered, closeness, *noted), (), injection)
