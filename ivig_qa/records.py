"""How the index writes chunks, sentences and their doc2query questions as Chroma records, and
reads chunks back (``index`` stores them; answering needs no corpus files)."""

from __future__ import annotations

import json
from typing import Any

from ivig_qa import doc2query
from ivig_qa.types import Chunk, Sentence, SourceDocument


def _sentence_text(sentence: Sentence, chunk: Chunk) -> str:
    heading = f"{chunk.heading}: " if chunk.heading else ""
    return f"{heading}{sentence.text}"


def chunk_metadata(chunk: Chunk, doc: SourceDocument) -> dict[str, Any]:
    meta = {
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "heading": chunk.heading,
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "sentences": json.dumps(
            [[s.start, s.end] if s.page is None else [s.start, s.end, s.page] for s in chunk.sentences]
        ),
    }
    for key in ("publisher", "url", "kind"):
        if doc.metadata.get(key):
            meta[key] = str(doc.metadata[key])
    return meta


def chunk_from_record(chunk_id: str, meta: dict[str, Any]) -> Chunk:
    """Rebuild a ``Chunk`` from what Chroma stores (no corpus files needed at answer time)."""
    start, text = int(meta["start"]), str(meta["text"])
    sentences = [
        Sentence(str(meta["doc_id"]), a, b, text[a - start : b - start], page[0] if page else None)
        for a, b, *page in json.loads(str(meta["sentences"]))
    ]
    return Chunk(
        chunk_id=chunk_id,
        doc_id=str(meta["doc_id"]),
        title=str(meta["title"]),
        heading=str(meta.get("heading") or ""),
        start=start,
        end=int(meta["end"]),
        text=text,
        sentences=sentences,
    )


def _new_sentences(chunks: list[Chunk], seen: set[str]) -> list[tuple[Sentence, Chunk]]:
    """Each sentence once, with the first chunk it appears in (overlapping chunks share some)."""
    out: list[tuple[Sentence, Chunk]] = []
    for chunk in chunks:
        for sentence in chunk.sentences:
            if sentence.sentence_id not in seen:
                seen.add(sentence.sentence_id)
                out.append((sentence, chunk))
    return out


def embedding_texts(chunks: list[Chunk], cache: dict[str, list[str]] | None = None) -> list[str]:
    """Exactly the texts a build embeds for these chunks (chunks, their sentences, their questions
    from ``cache``, by default the packaged doc2query cache).

    The benchmark encodes these with the bare model to show the build's overhead.
    """
    sentences = _new_sentences(chunks, set())
    questions = doc2query.question_records((s for s, _ in sentences), cache)[1]
    return [c.context_text() for c in chunks] + [_sentence_text(s, c) for s, c in sentences] + questions
