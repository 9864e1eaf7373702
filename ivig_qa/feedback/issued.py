"""The answers this server issued lately (answer id → their facts), so a rating can be stored with them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from ivig_qa.feedback.models import AnswerFacts

if TYPE_CHECKING:
    from ivig_qa.types import Answer

DEFAULT_CAPACITY = 10_000  # answers remembered; ~1 KB each, the oldest forgotten first


class IssuedAnswers:
    """A bounded, thread-safe map from answer id to ``AnswerFacts``, newest kept.

    The API and the chat record every answer they send (``record``); the feedback store
    looks the facts up when a rating arrives. A rating for an answer this process did not
    issue (another app server, before a restart, or older than ``capacity`` answers) is
    stored without facts. ``knows`` lets the feedback route check an id was issued.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._facts: OrderedDict[str, AnswerFacts] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, answer: Answer, index_version: str | None) -> None:
        if not answer.answer_id:
            return
        facts = AnswerFacts.of(answer, index_version)
        with self._lock:
            self._facts[answer.answer_id] = facts
            self._facts.move_to_end(answer.answer_id)
            while len(self._facts) > self.capacity:
                self._facts.popitem(last=False)

    def get(self, answer_id: str) -> AnswerFacts | None:
        with self._lock:
            return self._facts.get(answer_id)

    def knows(self, answer_id: str) -> bool:
        with self._lock:
            return answer_id in self._facts

    def __len__(self) -> int:
        return len(self._facts)
