"""doc2query: questions a patient might ask that each quotable source sentence answers.

The packaged local LLM writes ``QUESTIONS_PER_SENTENCE`` short questions per sentence once
(temperature 0, the one fixed prompt in ``engines.llm.prompts``); they are cached by sentence
hash (sha256 of the prompt version and the normalised sentence text) in
``data/doc2query.jsonl``, committed for the bundled corpus, so building the index and answering
never need the LLM. The index embeds the cached questions beside their sentence, and the ranker
scores how close a question comes to them (``engines.ranking``). A sentence without cached
questions (a new document, no LLM) simply has none; nothing fails.

``python -m ivig_qa.doc2query`` (or ``ivig-qa doc2query``) generates the missing entries for
the corpus when the ``llm`` extra is installed, and says so plainly when it is not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ivig_qa.engines.llm.prompts import DOC2QUERY_PROMPT_VERSION as PROMPT_VERSION
from ivig_qa.engines.llm.prompts import DOC2QUERY_SYSTEM as SYSTEM_PROMPT
from ivig_qa.engines.llm.prompts import DOC2QUERY_USER as USER_PROMPT
from ivig_qa.settings import Settings
from ivig_qa.text import collapse_space
from ivig_qa.types import Sentence

QUESTIONS_PER_SENTENCE = 3
CACHE_FILE = "doc2query.jsonl"

_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.):]|q\d*[.:)])\s*", re.IGNORECASE)


def sentence_key(text: str) -> str:
    """The cache key of a sentence: sha256 of the prompt version and its normalised text."""
    return hashlib.sha256(f"{PROMPT_VERSION}\n{collapse_space(text)}".encode()).hexdigest()


def parse_questions(reply: str) -> list[str]:
    """The model's reply as at most ``QUESTIONS_PER_SENTENCE`` distinct questions."""
    out: list[str] = []
    for line in reply.splitlines():
        q = collapse_space(_NUMBERING.sub("", line)).strip("\"'")
        if len(q.split()) < 2 or q.lower().startswith(("sentence:", "source:", "questions:", "example")):
            continue
        if q.lower() not in (o.lower() for o in out):
            out.append(q)
    return out[:QUESTIONS_PER_SENTENCE]


def cache_path(settings: Settings | None = None) -> Path:
    """The cache file: ``index.doc2query_file`` when set, else the packaged one (the bundled
    corpus's questions)."""
    configured = settings.index.doc2query_file if settings is not None else None
    if configured is not None:
        return configured.expanduser()
    return Path(str(resources.files("ivig_qa.data").joinpath(CACHE_FILE)))


def read_cache(path: Path | None = None) -> dict[str, list[str]]:
    """Key → questions, from the cache file (empty when it is absent)."""
    path = path or cache_path()
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["key"]] = list(row["questions"])
    return out


@cache
def _cached(path: Path, stamp: tuple[int, int]) -> dict[str, list[str]]:
    return read_cache(path)


def load_cache(settings: Settings | None = None) -> dict[str, list[str]]:
    """The configured cache (``cache_path``), read once per process while the file is unchanged."""
    path = cache_path(settings)
    stat = path.stat() if path.is_file() else None
    return _cached(path, (stat.st_mtime_ns, stat.st_size) if stat else (0, 0))


def packaged_cache() -> dict[str, list[str]]:
    """The committed cache of the bundled corpus."""
    return load_cache(None)


def cache_digest(settings: Settings | None = None) -> str:
    """What the index records of the cache it embedded (a new cache makes the index stale)."""
    path = cache_path(settings)
    raw = path.read_bytes() if path.is_file() else b""
    return f"{PROMPT_VERSION}:{hashlib.sha256(raw).hexdigest()[:16]}"


def questions_for(text: str, cache: dict[str, list[str]] | None = None) -> list[str]:
    """The cached questions for a sentence (none when it was never generated)."""
    return (packaged_cache() if cache is None else cache).get(sentence_key(text), [])


def question_records(
    sentences: Iterable[Sentence], cache: dict[str, list[str]] | None = None
) -> tuple[list[str], list[str], list[dict]]:
    """Ids, texts and metadata of the cached questions of these sentences, for the index
    (``cache``: the configured cache; default the packaged one)."""
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict] = []
    for s in sentences:
        for i, q in enumerate(questions_for(s.text, cache)):
            ids.append(f"{s.sentence_id}:q{i}")
            texts.append(q)
            metas.append({"doc_id": s.doc_id, "sentence_id": s.sentence_id})
    return ids, texts, metas


def vectors_by_sentence(records: Mapping) -> dict[str, np.ndarray]:
    """Stored question records (``embeddings``, ``metadatas``) as sentence id → one row per question."""
    rows: dict[str, list] = {}
    embeddings = records.get("embeddings")
    metas = records.get("metadatas") or []
    for vector, meta in zip([] if embeddings is None else embeddings, metas, strict=True):
        rows.setdefault(str(meta["sentence_id"]), []).append(vector)
    return {sid: np.asarray(v, dtype=np.float32) for sid, v in rows.items()}


def corpus_sentences(settings: Settings) -> list[tuple[str, str]]:
    """(title, text) of every sentence of the corpus's chunks (the quotable ones are among them),
    each once, in corpus order."""
    from ivig_qa.chunking import ChunkerSettings, chunk_corpus
    from ivig_qa.corpus import load_corpus

    docs = load_corpus(Path(settings.index.corpus_dir)).documents
    chunker = ChunkerSettings(settings.index.chunk_max_chars, settings.index.chunk_overlap_sentences)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for chunk in chunk_corpus(docs, chunker):
        for s in chunk.sentences:
            if s.sentence_id not in seen:
                seen.add(s.sentence_id)
                out.append((chunk.title, s.text))
    return out


def generate(settings: Settings, sentences: Iterable[tuple[str, str]], path: Path, log=print) -> int:
    """Ask the LLM for the sentences missing from the cache at ``path``; append each as it comes."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from ivig_qa.engines.llm.backends import load_chat_model, message_text

    have = read_cache(path)
    todo = [(t, s) for t, s in sentences if sentence_key(s) not in have]
    if not todo:
        log(f"doc2query: all sentences cached in {path}")
        return 0
    llm = settings.updated(temperature=0.0, max_tokens=64)
    model = load_chat_model(llm)
    done = 0
    with path.open("a", encoding="utf-8") as f:
        for title, text in todo:
            key = sentence_key(text)
            if key in have:
                continue
            messages = [
                SystemMessage(SYSTEM_PROMPT),
                HumanMessage(USER_PROMPT.format(title=title, sentence=text)),
            ]
            with model.lock:
                reply = message_text(model.chat.invoke(messages, stop=["\nSentence:", "\nSource:"]).content)
            questions = parse_questions(reply)
            row = {
                "key": key,
                "version": PROMPT_VERSION,
                "sentence": collapse_space(text),
                "questions": questions,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            have[key] = questions
            done += 1
            log(f"doc2query: {done}/{len(todo)} {questions}", flush=True)
    return done


def run(settings: Settings, out: Path | None = None) -> int:
    """Generate the corpus's missing entries into ``out`` (default: the packaged cache); the exit
    status: 0 done, 2 when the LLM extra or model is not here (said on stderr)."""
    from ivig_qa.engines.llm.backends import LLMUnavailableError

    try:
        generate(settings, corpus_sentences(settings), out or cache_path(settings))
    except LLMUnavailableError as exc:
        print(f"doc2query: cannot generate questions without the LLM: {exc}", file=sys.stderr)
        print(
            "doc2query: the index still builds; sentences without cached questions lack the feature.",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivig_qa.doc2query", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="cache file (default: index.doc2query_file, else packaged)"
    )
    args = parser.parse_args(argv)
    return run(Settings.load(), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
