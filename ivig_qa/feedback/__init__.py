"""Thumbs up/down on answers: what is stored, where (SQLite or PostgreSQL), and the care team's report.

Only what is needed to judge an answer is stored: the answer id, the rating, an optional
comment, the time, and what the server knew about the answer (status, reason ids, cited
sources, index version, engine). The question text is stored only when the operator has
switched on ``log_questions``; otherwise it is dropped before it reaches the database.
"""

# The backends register themselves with FeedbackStore when imported.
from ivig_qa.feedback import postgres as _postgres  # noqa: F401
from ivig_qa.feedback import sqlite as _sqlite  # noqa: F401
from ivig_qa.feedback.ids import AnswerIds
from ivig_qa.feedback.issued import IssuedAnswers
from ivig_qa.feedback.models import AnswerFacts, CitedSource, FeedbackIn, FeedbackRecord, Rating
from ivig_qa.feedback.sqlite import BUSY_TIMEOUT_S
from ivig_qa.feedback.store import (
    FeedbackStore,
    FeedbackUnavailableError,
    feedback_location,
    is_database_url,
    open_store,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "AnswerFacts",
    "AnswerIds",
    "CitedSource",
    "FeedbackIn",
    "FeedbackRecord",
    "FeedbackStore",
    "FeedbackUnavailableError",
    "IssuedAnswers",
    "Rating",
    "feedback_location",
    "is_database_url",
    "open_store",
]
