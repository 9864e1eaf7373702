"""Stage 2: split documents into sentences and pack them into chunks.

Sentences are the unit the extractive engine quotes, so the splitter must not break on
"Dr.", "et. al", "e.g.", "a.k.a.", decimals or ranges such as "1.3–2.0 g/kg". Chunks are
a few consecutive sentences of one section with a one-sentence overlap; their ids
(``doc_id#n``) are stable for an unchanged document.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ivig_qa import formats
from ivig_qa.types import Block, Chunk, Sentence, SourceDocument

# 3: headings, titles, bylines and reference lines are context, never quotable sentences.
CHUNKER_VERSION = "3"

# Words that end with a period but do not end a sentence (compared lower-case, no dot).
ABBREVIATIONS = frozenset(
    [
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "al",
        "et",
        "eg",
        "ie",
        "e.g",
        "i.e",
        "a.k.a",
        "aka",
        "approx",
        "appt",
        "dept",
        "fig",
        "inc",
        "ltd",
        "vol",
        "cf",
        "resp",
        "incl",
        "avg",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    ]
)

# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
_NEXT_STARTS_SENTENCE = re.compile(r"[\"'“‘(\[]*[A-Z0-9•]")


@dataclass(frozen=True)
class ChunkerSettings:
    max_chars: int
    overlap_sentences: int

    def fingerprint(self) -> str:
        # The readers' versions too: a reader that extracts other text moves every offset.
        raw = f"v{CHUNKER_VERSION}:{self.max_chars}:{self.overlap_sentences}:{formats.fingerprint()}"
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the period at ``dot`` belongs to an abbreviation or an initial."""
    m = re.search(r"([A-Za-z.]+)$", text[:dot])
    if not m:
        return False
    word = m.group(1).lower().strip(".")
    if word in ABBREVIATIONS:
        return True
    # Single capital initial ("J. Smith") or dotted acronyms ("U.S.").
    return len(word) == 1 or bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", word))


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:end]`` as absolute offsets, trimmed of whitespace."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    cursor = start
    for m in _BOUNDARY.finditer(text, start, end):
        nxt = text[m.end() : m.end() + 3]
        if not _NEXT_STARTS_SENTENCE.match(nxt):
            continue  # "et. al found", "e.g. small fiber": lower-case continues the sentence
        if text[m.start()] == "." and _is_abbreviation(text, m.start()):
            continue
        spans.append((cursor, m.start() + len(m.group().rstrip())))
        cursor = m.end()
    spans.append((cursor, end))
    return [_trim(text, a, b) for a, b in spans if text[a:b].strip()]


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _block_lines(text: str, block: Block) -> list[tuple[int, int]]:
    """Lines of a block, joining hard-wrapped lines (a line followed by a lower-case start)."""
    lines: list[tuple[int, int]] = []
    for m in re.finditer(r"[^\n]+", text[block.span.start : block.span.end]):
        a, b = _trim(text, block.span.start + m.start(), block.span.start + m.end())
        if a == b:
            continue
        if lines and text[a].islower() and text[lines[-1][1] - 1] not in ".!?:;":
            lines[-1] = (lines[-1][0], b)
        else:
            lines.append((a, b))
    return lines


def document_sentences(doc: SourceDocument) -> list[tuple[Sentence, str, int]]:
    """Every sentence with its section heading and the index of its block."""
    out: list[tuple[Sentence, str, int]] = []
    for bi, block in enumerate(doc.blocks):
        for la, lb in _block_lines(doc.text, block):
            for a, b in split_sentences(doc.text, la, lb):
                sentence = Sentence(doc.doc_id, a, b, doc.text[a:b], doc.page_at(a))
                out.append((sentence, block.heading, bi))
    return out


def _contiguous(doc: SourceDocument, prev: Sentence, nxt: Sentence) -> bool:
    """No removed furniture between two sentences (so the chunk text is one original span)."""
    gap = doc.text[prev.end : nxt.start]
    return gap.strip() == ""


def chunk_document(doc: SourceDocument, settings: ChunkerSettings) -> list[Chunk]:
    """Pack sentences into chunks of at most ``max_chars`` within one section."""
    groups: list[list[Sentence]] = []
    current: list[Sentence] = []
    current_heading: str | None = None
    located = document_sentences(doc)
    for sentence, heading, _ in located:
        size = sentence.end - current[0].start if current else 0
        new_section = heading != current_heading
        breaks = current and (
            new_section or size > settings.max_chars or not _contiguous(doc, current[-1], sentence)
        )
        if breaks:
            groups.append(current)
            keep = (
                settings.overlap_sentences
                if not new_section and _contiguous(doc, current[-1], sentence)
                else 0
            )
            current = current[-keep:] if keep and len(current) > keep else []
        current.append(sentence)
        current_heading = heading
    if current:
        groups.append(current)
    headings = {s.start: h for s, h, _ in located}
    return [
        Chunk(
            chunk_id=f"{doc.doc_id}#{n}",
            doc_id=doc.doc_id,
            title=doc.title,
            heading=headings[group[0].start],
            start=group[0].start,
            end=group[-1].end,
            text=doc.text[group[0].start : group[-1].end],
            sentences=list(group),
        )
        for n, group in enumerate(groups)
    ]


def chunk_corpus(docs: list[SourceDocument], settings: ChunkerSettings) -> list[Chunk]:
    return [chunk for doc in docs for chunk in chunk_document(doc, settings)]
