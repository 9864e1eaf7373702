"""Document formats: one module per format, looked up by file suffix.

Adding a format is a one-module job: put ``NAME.py`` in this folder with a module-level
``FORMAT = Format(name, suffixes, media_type, version, read)``, where ``read(bytes)``
returns an ``Extracted`` (the document's text, its blocks and, for paged formats, where
each page starts) or raises ``FormatError`` saying why the file cannot be used. The
registry finds the module by itself; its suffixes are then read by ``ivig-qa index``.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from functools import cache

from ivig_qa.formats.base import Extracted, Format, FormatError, Furniture

__all__ = ["Extracted", "Format", "FormatError", "fingerprint", "for_suffix", "registry", "suffixes"]


@cache
def registry() -> dict[str, Format]:
    """Suffix (lower case, with the dot) → its format, from every module of this package."""
    found: dict[str, Format] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        fmt = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FORMAT", None)
        if not isinstance(fmt, Format):
            continue
        for suffix in fmt.suffixes:
            if suffix in found:
                raise RuntimeError(f"{suffix} is claimed by both {found[suffix].name} and {fmt.name}")
            found[suffix.lower()] = fmt
    return found


def for_suffix(suffix: str) -> Format | None:
    return registry().get(suffix.lower())


def suffixes() -> list[str]:
    return sorted(registry())


def fingerprint() -> str:
    """Changes whenever any reader would extract different text (its version or its library's)
    or the furniture rules every reader applies change (``data/furniture.toml``)."""
    rules = Furniture.load()
    furniture = "|".join(p.pattern for p in (*rules.lines, *rules.trailers))
    raw = ";".join(f"{s}={f.name}:{f.version}" for s, f in sorted(registry().items())) + furniture
    return hashlib.sha256(raw.encode()).hexdigest()[:12]
