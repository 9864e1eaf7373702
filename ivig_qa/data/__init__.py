"""The reviewed rule and wording files shipped with the package (TOML, one per concern)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources


@cache
def load(name: str) -> dict:
    """One packaged data file, parsed once per process (callers copy before changing it)."""
    return tomllib.loads(resources.files(__name__).joinpath(name).read_text("utf-8"))
