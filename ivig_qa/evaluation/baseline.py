"""The baseline: the retrieval a newcomer builds from the LangChain RAG tutorial, for comparison."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ivig_qa.evaluation.dataset import TextRange

if TYPE_CHECKING:
    from langchain_chroma import Chroma

SMALL_K = 4  # the baseline's top-k; ours is also reported at this k for a fair comparison
BASELINE_CHUNK_SIZE = 1000
BASELINE_CHUNK_OVERLAP = 200


class BaselineRetriever:
    """What a newcomer builds from the LangChain RAG tutorial: 1000/200 character chunks of
    the raw file texts, the same embedding model, an in-memory Chroma, similarity top-4."""

    description = (
        f"LangChain RAG tutorial: RecursiveCharacterTextSplitter({BASELINE_CHUNK_SIZE}/"
        f"{BASELINE_CHUNK_OVERLAP}) over raw texts, same embeddings, ephemeral Chroma, top-{SMALL_K}, "
        "queried with the question as typed (no follow-up rewriting)"
    )

    def __init__(self, store: Chroma, chunks: int, k: int = SMALL_K) -> None:
        self.store = store
        self.chunks = chunks
        self.k = k

    @classmethod
    def build(
        cls, documents: Mapping[str, str], embedding_model: str, batch_size: int = 64
    ) -> BaselineRetriever:
        """Split, embed and index the raw texts (the same cached model the index uses)."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from langchain_chroma import Chroma
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from ivig_qa.embeddings import load_embeddings

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=BASELINE_CHUNK_SIZE, chunk_overlap=BASELINE_CHUNK_OVERLAP, add_start_index=True
        )
        ids = sorted(documents)
        splits = splitter.create_documents(
            [documents[d] for d in ids], metadatas=[{"doc_id": d} for d in ids]
        )
        client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
        store = Chroma(
            client=client,
            collection_name=f"eval-baseline-{uuid.uuid4().hex[:12]}",
            embedding_function=load_embeddings(embedding_model, batch_size),
        )
        store.add_documents(splits)
        return cls(store, len(splits))

    def retrieve(self, question: str) -> list[TextRange]:
        hits = self.store.similarity_search(question, k=self.k)
        return [
            TextRange(
                h.metadata["doc_id"],
                h.metadata["start_index"],
                h.metadata["start_index"] + len(h.page_content),
            )
            for h in hits
        ]

    def close(self) -> None:
        """Drop the temporary collection (the ephemeral client lives as long as the process)."""
        self.store.delete_collection()
