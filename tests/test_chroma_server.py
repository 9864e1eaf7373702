"""Server mode: the index on a real Chroma server (``chroma run``, started here on a free port).

Index, ask, incremental rebuilds, ``--rebuild`` dropping this prefix's collections on the
server (never another prefix's, never a local folder), and two app servers — one
``ivig-qa serve`` process and one in-process — sharing the index, both answering, and both
switching to a new index version written by an indexer without a failed request.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ivig_qa.assistant import Assistant
from ivig_qa.bench.runner import AppServer, ChromaServer, settings_env, wait_until
from ivig_qa.cli import app
from ivig_qa.index import IndexStore
from ivig_qa.web.app import BackgroundServer, create_app
from ivig_qa.settings import Settings
from ivig_qa.types import Status

SMALL_DOCS = ("ivig-chronic-pain-review", "ivig-infantile-spasms")
CRPS_QUESTION = "how often are infusions given for CRPS"
NEW_FACT = "IVIG infusions for CRPS are given every four weeks."


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One Chroma server for the module; each test uses its own collection prefix on it."""
    with ChromaServer(tmp_path_factory.mktemp("chroma") / "db") as server:
        yield server


@pytest.fixture
def server_settings(chroma: ChromaServer, tmp_path: Path, corpus_dir: Path) -> Settings:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc_id in SMALL_DOCS:
        shutil.copy(corpus_dir / f"{doc_id}.txt", corpus)
    shutil.copy(corpus_dir / "sources.toml", corpus)
    return Settings(
        corpus_dir=corpus,
        index_dir=tmp_path / "no-local-index",
        chroma_url=chroma.url,
        collection_prefix=f"t{uuid.uuid4().hex[:10]}",
        feedback_db=tmp_path / "feedback.sqlite3",
        chroma_timeout_s=5,
        chroma_poll_s=0.5,
        rate_limit_per_minute=0,
        chat_ui=False,
    )


def add_new_fact(settings: Settings) -> None:
    path = settings.corpus_dir / "ivig-chronic-pain-review.txt"
    text = path.read_text("utf-8").replace("Publication types", f"{NEW_FACT}\n\nPublication types")
    path.write_text(text, "utf-8")


def versions_on_server(store: IndexStore) -> set[str]:
    """The index versions of this prefix that have collections on the server."""
    names = [c.name for c in store.client.list_collections()]
    return {v for n in names if (v := store._owned_version(n))}


def test_index_and_answer_from_the_server(server_settings: Settings) -> None:
    summary = IndexStore(server_settings).build()
    assert summary.rebuilt and sorted(summary.embedded_documents) == sorted(SMALL_DOCS)
    assert summary.chunks > 0 and summary.sentences > summary.chunks
    assert not server_settings.index_dir.exists()  # nothing local in server mode

    assistant = Assistant.load(server_settings, build=False)
    answer = assistant.ask("How soon do infantile spasms respond to IVIG?")
    assert answer.status == Status.ANSWERED
    assert answer.citations and {c.doc_id for c in answer.citations} <= set(SMALL_DOCS)
    assert versions_on_server(assistant.store) == {assistant.manifest.version}


def test_incremental_rebuild_reembeds_only_the_changed_document(server_settings: Settings) -> None:
    store = IndexStore(server_settings)
    first = store.build()
    v0 = store.manifest().version
    assert store.build().embedded_documents == []  # up to date: nothing embedded, nothing switched
    assert store.manifest().version == v0

    add_new_fact(server_settings)
    second = store.build()
    assert second.embedded_documents == ["ivig-chronic-pain-review"]
    assert second.reused_documents == ["ivig-infantile-spasms"]
    answer = Assistant.load(server_settings, build=False).ask(CRPS_QUESTION)
    assert any("every four weeks" in c.quote for c in answer.citations)

    v1 = store.manifest().version
    # The replaced version stays one build longer for app servers still reading it…
    (server_settings.corpus_dir / "ivig-chronic-pain-review.txt").unlink()
    third = store.build()
    assert third.removed_documents == ["ivig-chronic-pain-review"]
    v2 = store.manifest().version
    assert versions_on_server(store) == {v1, v2}
    # …and the one before it is gone.
    assert first.rebuilt and len({v0, v1, v2}) == 3
    assert v0 not in versions_on_server(store)


def test_cli_rebuild_drops_only_this_prefixs_collections_on_the_server(server_settings: Settings) -> None:
    store = IndexStore(server_settings)
    store.build()
    old = store.manifest().version
    prefix = server_settings.collection_prefix
    crashed = f"{prefix}_chunks_v20000101000000abcdef"  # left by a build that died
    decoys = [f"{prefix}_x_chunks_{old}", f"{prefix}x_meta", f"{prefix}_notes"]  # not ours to drop
    for name in [crashed, *decoys]:
        store.client.get_or_create_collection(name)

    result = CliRunner().invoke(app, ["index", "--rebuild"], env=settings_env(server_settings))
    assert result.exit_code == 0, result.output
    assert server_settings.chroma_url in result.output

    new = IndexStore(server_settings).manifest().version
    names = {c.name for c in store.client.list_collections()}
    assert new != old and versions_on_server(store) == {new}
    assert crashed not in names and set(decoys) <= names
    assert not server_settings.index_dir.exists()


def wait_for_version(client: httpx.Client, url: str, version: str, timeout: float = 60) -> None:
    def switched() -> bool:
        return client.get(f"{url}/api/health").json().get("index_version") == version

    wait_until(switched, timeout, f"{url} switching to index {version}")


def test_two_app_servers_share_the_index_and_follow_a_new_version(
    server_settings: Settings, tmp_path: Path
) -> None:
    store = IndexStore(server_settings)
    client = httpx.Client(timeout=30)
    # App servers only read: one started before any index exists waits for the indexer.
    early = BackgroundServer(create_app(server_settings), server_settings, wait_ready=False)
    local = early.start()
    try:
        assert client.get(f"{local}/api/health").status_code == 503
        store.build()
        first = store.manifest().version
        wait_for_version(client, local, first)
        with AppServer(settings_env(server_settings), tmp_path / "serve.log") as other:
            ask_both_during_a_new_build(client, [other.url, local], first, server_settings)
    finally:
        early.stop()
        client.close()


def ask_both_during_a_new_build(
    client: httpx.Client, urls: list[str], first: str, settings: Settings
) -> None:
    """Both answer the same; an indexer writes a new version; both switch without a failed request."""
    for url in urls:
        health = client.get(f"{url}/api/health").json()
        assert health["ready"] and health["index_version"] == first
    replies = [client.post(f"{url}/api/ask", json={"question": CRPS_QUESTION}) for url in urls]
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert replies[0].json()["answer"] == replies[1].json()["answer"]

    failures: list[str] = []
    asked: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            for url in urls:
                asked.append(url)
                try:  # a dropped connection is a failure too, not a dead thread
                    r = client.post(f"{url}/api/ask", json={"question": CRPS_QUESTION})
                except httpx.HTTPError as exc:
                    failures.append(f"{url}: {exc!r}")
                    continue
                if r.status_code != 200:
                    failures.append(f"{url}: {r.status_code} {r.text[:200]}")
            time.sleep(0.1)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        add_new_fact(settings)
        store = IndexStore(settings)
        assert store.build().embedded_documents == ["ivig-chronic-pain-review"]
        second = store.manifest().version
        for url in urls:
            wait_for_version(client, url, second)
    finally:
        stop.set()
        asker.join()
    assert failures == []
    assert set(asked) == set(urls)  # both servers were asked while the index switched
    for url in urls:
        body = client.post(f"{url}/api/ask", json={"question": CRPS_QUESTION}).json()
        assert any("every four weeks" in c["quote"] for c in body["citations"]), url
