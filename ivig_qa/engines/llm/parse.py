"""Splitting the model's answer into sentences, each with the ``[n]`` it cited (only a hint)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ivig_qa.text import CITE, collapse_space

_CITE_RE = re.compile(CITE)
_CITES = rf"(?:{CITE}\s*)+"
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_ABBREV = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Prof|St|vs|e\.g|i\.e|etc|al|approx|No)\.$", re.IGNORECASE)


# "From the first source, …", "According to “IVIG for Lupus” [2], …": where, not what.
_LEAD_IN = re.compile(
    r"^(?:from|according to|in|as (?:stated|noted|said) in)\s+(?:the\s+)?"
    r"(?:\"[^\"]*\"|“[^”]*”|\[\d+\]|sources?\s*\d+|(?:first|second|third|fourth|fifth|sixth|other|same|"
    r"last|\w+)\s+sources?|sources?)(?:\s*\[\d+\])?\s*[,:]\s*|^(?:from|according to)\s*[,:]\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Generated:
    """One sentence of the model's answer, markers removed, with the numbers it cited."""

    text: str
    cites: tuple[int, ...]


def _end_before_cites(m: re.Match[str]) -> str:
    """A full stop before markers that close a sentence without one ("month [1] It …")."""
    before = m.string[: m.start()]
    return m.group(1) if re.search(r"[.!?][\"”’)]*\s*$", before) or not before.strip() else "." + m.group(1)


def split_generated(answer: str) -> list[Generated]:
    """Sentences with their ``[n]``; markers may come before or after the full stop."""
    lines = []
    answer = re.sub(r"^\s*(?:answer|short answer)\s*:\s*", "", answer, flags=re.IGNORECASE)
    for line in answer.replace("**", "").splitlines():
        line = _BULLET.sub("", line).strip()
        lead = re.match(rf"^({_CITES})(.+)$", line)
        if lead:  # "[2] Sentence." -> "Sentence. [2]"
            line = f"{lead.group(2).strip()} {lead.group(1).strip()}"
        if not line:
            continue
        if not re.search(r"[.!?:]\s*$|\]\s*$", line):
            line += "."
        lines.append(line)
    text = " ".join(lines)
    text = re.sub(rf"\s*({_CITES})([.!?])", r"\2 \1", text)  # "month [1]." -> "month. [1]"
    text = re.sub(rf"(\s*{_CITES})(?=\s+[A-Z\"“(]|\s*$)", _end_before_cites, text)  # "month [1] It"
    units = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"“(\[])|(?<=\])\s+(?=[A-Z0-9\"“(])", text)
    merged: list[str] = []
    for unit in units:
        if merged and (_ABBREV.search(merged[-1]) or unit.startswith("[")):
            merged[-1] = f"{merged[-1]} {unit}"
        else:
            merged.append(unit)
    out: list[Generated] = []
    for unit in merged:
        cites = tuple(int(n) for group in _CITE_RE.findall(unit) for n in re.findall(r"\d+", group))
        clean = collapse_space(_CITE_RE.sub(" ", unit))
        clean = re.sub(r"\s+([.,;:!?])", r"\1", clean).strip()
        if clean.endswith(":"):  # a heading or lead-in ("From “IVIG for Lupus”:") states nothing
            continue
        clean = _LEAD_IN.sub("", clean)
        clean = clean[:1].upper() + clean[1:]
        if re.search(r"[A-Za-z0-9]", clean):
            out.append(Generated(clean, tuple(dict.fromkeys(cites))))
    return out
