"""Everything that decides the kind of answer: input limits, triage, scope, the decision, wording."""

from ivig_qa.policy.decide import Thresholds, decide
from ivig_qa.policy.input import InputLimits, InvalidQuestion, check_history, clean_question
from ivig_qa.policy.wording import DISCLAIMER, Frame, frame

__all__ = [
    "DISCLAIMER",
    "Frame",
    "InputLimits",
    "InvalidQuestion",
    "Thresholds",
    "check_history",
    "clean_question",
    "decide",
    "frame",
]
