"""The care team's view of the ratings: totals, and each thumbs-down with what the answer was built from.

``ivig-qa feedback`` prints ``tables()``, ``--json`` prints ``to_json()`` and ``--export`` writes
``write_csv()``. Questions appear only when the operator has ``log_questions`` on (and they
were stored then); everything else comes from the facts stored with the rating.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.table import Table

from ivig_qa.feedback.models import FeedbackRecord

UNKNOWN = "unknown"  # a rating for an answer this server had not issued (or from before facts were kept)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` (ago), or an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a duration like 7d, 12h, 30m or a date like 2026-05-01"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def sources_text(record: FeedbackRecord) -> str:
    facts = record.facts
    if facts is None:
        return UNKNOWN
    return "; ".join(f"[{c.n}] {c.title} ({c.chunk_id})" for c in facts.cited) or "none"


@dataclass
class FeedbackReport:
    """Ratings over a period, newest first."""

    ratings: list[FeedbackRecord]
    since: datetime | None
    show_questions: bool
    location: str

    @property
    def down(self) -> list[FeedbackRecord]:
        return [r for r in self.ratings if r.rating == "down"]

    def groups(self, key: str) -> dict[str, dict[str, int]]:
        """``{value: {"up": n, "down": n}}`` by ``status``, ``engine`` or ``index_version``."""
        counts: dict[str, Counter[str]] = {}
        for r in self.ratings:
            value = (getattr(r.facts, key) or UNKNOWN) if r.facts else UNKNOWN
            counts.setdefault(value, Counter())[r.rating] += 1
        return {v: {"up": c["up"], "down": c["down"]} for v, c in sorted(counts.items())}

    def row(self, record: FeedbackRecord) -> dict[str, Any]:
        """One rating as plain data (the JSON report and the CSV share it)."""
        facts = record.facts
        out: dict[str, Any] = {
            "created_at": record.created_at.isoformat(),
            "rating": record.rating,
            "answer_id": record.answer_id,
            "status": facts.status if facts else None,
            "reasons": facts.reasons if facts else None,
            "sources": [c.model_dump() for c in facts.cited] if facts else None,
            "index_version": facts.index_version if facts else None,
            "engine": facts.engine if facts else None,
            "comment": record.comment,
        }
        if self.show_questions:
            out["question"] = record.question
        return out

    def to_json(self) -> dict[str, Any]:
        ups = sum(r.rating == "up" for r in self.ratings)
        return {
            "location": self.location,
            "since": self.since.isoformat() if self.since else None,
            "ratings": len(self.ratings),
            "up": ups,
            "down": len(self.ratings) - ups,
            "by_status": self.groups("status"),
            "by_engine": self.groups("engine"),
            "by_index_version": self.groups("index_version"),
            "down_rated": [self.row(r) for r in self.down],
        }

    def tables(self) -> list[Table]:
        """A totals table per grouping, then the down-rated answers."""
        period = f"since {self.since:%Y-%m-%d %H:%M} UTC" if self.since else "all time"
        summary = self.to_json()
        totals = Table(title=f"Feedback ({period}, {self.location})")
        for column in ("", "ratings", "up", "down", "down share"):
            totals.add_column(column, justify="left" if not column else "right")
        totals.add_row("all", *_counts(summary["up"], summary["down"]))
        for key, title in (("status", "status"), ("engine", "engine"), ("index_version", "index")):
            for value, c in self.groups(key).items():
                totals.add_row(f"{title}: {value}", *_counts(c["up"], c["down"]))
        down = Table(title=f"Down-rated answers ({len(self.down)})", show_lines=True)
        down.add_column("when (UTC)", no_wrap=True)
        down.add_column("status", no_wrap=True)
        down.add_column("reasons", overflow="fold")
        down.add_column("sources", overflow="fold", min_width=32)
        down.add_column("comment", overflow="fold", ratio=2)
        if self.show_questions:
            down.add_column("question", overflow="fold", ratio=2)
        down.add_column("answer", overflow="fold", style="dim", max_width=24)
        for r in self.down:
            facts = r.facts
            cells = [
                f"{r.created_at.astimezone(UTC):%Y-%m-%d %H:%M}",
                facts.status if facts else UNKNOWN,
                ", ".join(facts.reasons) if facts else UNKNOWN,
                "\n".join(f"[{c.n}] {c.chunk_id}" for c in facts.cited) if facts else UNKNOWN,
                r.comment or "",
            ]
            if self.show_questions:
                cells.append(r.question or "(not stored)")
            answer = r.answer_id
            if facts:
                answer += f"\nindex {facts.index_version or UNKNOWN}\n{facts.engine}"
            down.add_row(*cells, answer)
        return [totals, down]

    def write_csv(self, path: Path) -> int:
        """Every rating of the period, one row each; returns the number written."""
        columns = ["created_at", "rating", "answer_id", "status", "reasons", "sources", "index_version"]
        columns += ["engine", "comment"] + (["question"] if self.show_questions else [])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in self.ratings:
                row = self.row(r)
                row["reasons"] = "; ".join(row["reasons"]) if row["reasons"] is not None else UNKNOWN
                row["sources"] = sources_text(r)
                writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
        return len(self.ratings)


def _counts(up: int, down: int) -> tuple[str, str, str, str]:
    total = up + down
    share = f"{down / total:.0%}" if total else "—"
    return str(total), str(up), str(down), share
