"""doc2query: the committed question cache, the index's question vectors, and the d2q features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ivig_qa import doc2query
from ivig_qa.assistant import Assistant
from ivig_qa.corpus import load_corpus
from ivig_qa.engines.extractive import ExtractiveEngine
from ivig_qa.engines.ranking import FEATURES
from ivig_qa.index import IndexStore
from ivig_qa.settings import Settings
from ivig_qa.testing import small_corpus


def test_replies_are_parsed_into_at_most_three_distinct_questions() -> None:
    reply = (
        "1. How often is IVIG given?\n- how often is ivig given?\n\nQuestions:\n2) Is it monthly?\nQ3: x\n"
    )
    assert doc2query.parse_questions(reply) == ["How often is IVIG given?", "Is it monthly?"]
    many = "\n".join(f"question number {i}?" for i in range(6))
    assert len(doc2query.parse_questions(many)) == doc2query.QUESTIONS_PER_SENTENCE


def test_the_cache_key_is_the_normalised_sentence_and_the_prompt_version(monkeypatch) -> None:
    key = doc2query.sentence_key("IVIG is  given\nmonthly.")
    assert key == doc2query.sentence_key(" IVIG is given monthly. ")
    assert key != doc2query.sentence_key("IVIG is given weekly.")
    monkeypatch.setattr(doc2query, "PROMPT_VERSION", "another")
    assert doc2query.sentence_key("IVIG is given monthly.") != key


def test_every_quotable_sentence_of_the_bundled_corpus_has_cached_questions() -> None:
    """The committed cache covers the corpus, so `make run` never needs the LLM (regenerate with
    `ivig-qa doc2query` after changing a document)."""
    sentences = doc2query.corpus_sentences(Settings.load())
    assert len(sentences) > 100
    cached = doc2query.packaged_cache()
    missing = [text for _, text in sentences if doc2query.sentence_key(text) not in cached]
    assert not missing, f"{len(missing)} sentences lack questions, e.g. {missing[0]!r}"
    assert sum(bool(cached[doc2query.sentence_key(t)]) for _, t in sentences) >= 0.95 * len(sentences)


def test_the_index_keeps_each_sentences_question_vectors(assistant: Assistant) -> None:
    store, version = assistant.retriever.store, assistant.retriever.manifest.version
    vectors = store.question_vectors(version)
    chunk = next(iter(assistant.retriever.chunks.values()))
    sentence = next(s for s in chunk.sentences if doc2query.questions_for(s.text))
    rows = vectors[sentence.sentence_id]
    assert rows.shape == (len(doc2query.questions_for(sentence.text)), 384)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3)


def test_a_question_a_sentence_was_given_scores_highest_on_d2q(assistant: Assistant) -> None:
    engine = ExtractiveEngine(assistant.retriever, assistant.settings)
    chunk = sorted(assistant.retriever.chunks.values(), key=lambda c: c.chunk_id)[5]
    sentence = next(s for s in chunk.sentences if doc2query.questions_for(s.text))
    question = doc2query.questions_for(sentence.text)[0]
    retrieval = assistant.retrieve(question)
    items, x = engine.features(retrieval)
    ids = [s.sentence_id for s, _, _ in items]
    if sentence.sentence_id not in ids:
        pytest.skip("the sentence's passage was not retrieved for its own question")
    row = ids.index(sentence.sentence_id)
    d2q = x[:, FEATURES.index("d2q")]
    assert d2q[row] > 0.9  # the same text through the query and the document encoder
    assert d2q[row] == d2q.max() and x[row, FEATURES.index("d2q_rank")] == 1.0


def test_without_the_cache_the_index_builds_and_d2q_falls_back_to_the_sentence(tmp_path: Path) -> None:
    cache = tmp_path / "questions.jsonl"  # index.doc2query_file: not there yet
    settings = Settings.load(corpus_dir=Path("corpus"), index_dir=tmp_path / "index", doc2query_file=cache)
    assistant = Assistant.load(settings)
    store, version = assistant.retriever.store, assistant.retriever.manifest.version
    assert store.question_vectors(version) == {}
    assert assistant.retriever.manifest.doc2query == doc2query.cache_digest(settings)
    engine = ExtractiveEngine(assistant.retriever, settings)
    retrieval = assistant.retrieve("how often is ivig given for lupus?")
    items, x = engine.features(retrieval)
    assert items and np.allclose(x[:, FEATURES.index("d2q")], x[:, FEATURES.index("dense")])
    assert assistant.ask("how often is ivig given for lupus?").citations
    # The cache arrives: the index is stale until rebuilt, and then has the questions.
    cache.write_bytes(doc2query.cache_path().read_bytes())
    docs = load_corpus(settings.index.corpus_dir).documents
    assert assistant.store.stale_reason(docs) == "doc2query questions changed"
    rebuilt = Assistant.load(settings)
    assert rebuilt.retriever.store.question_vectors(rebuilt.retriever.manifest.version)


def test_generating_without_a_model_says_so_and_fails_cleanly(tmp_path: Path, capsys) -> None:
    settings = Settings.load(model_path=tmp_path / "no-such-model.gguf")
    assert doc2query.run(settings, tmp_path / "cache.jsonl") == 2
    err = capsys.readouterr().err
    assert "cannot generate questions without the LLM" in err and "the index still builds" in err


def test_an_unchanged_document_keeps_its_questions_and_a_new_sentence_has_none(
    tmp_path: Path, corpus_dir: Path
) -> None:
    settings = Settings.load(
        corpus_dir=small_corpus(corpus_dir, tmp_path / "corpus"), index_dir=tmp_path / "index"
    )
    store = IndexStore(settings)
    store.build()
    first = store.question_vectors(store.manifest().version)
    path = settings.index.corpus_dir / "ivig-chronic-pain-review.txt"
    new_fact = "IVIG infusions for CRPS are given every four weeks."
    path.write_text(path.read_text("utf-8").replace("Publication types", f"{new_fact}\n\nPublication types"))
    assert store.build().reused_documents == ["ivig-infantile-spasms"]
    second = store.question_vectors(store.manifest().version)
    kept = {k for k in first if k.startswith("ivig-infantile-spasms")}
    assert kept and all(np.allclose(first[k], second[k]) for k in kept)
    assert len(second) == len(first)  # the new sentence has no cached questions: no vectors, no error
    answer = Assistant.load(settings).ask("how often are infusions given for CRPS")
    assert any(new_fact in c.quote for c in answer.citations)
