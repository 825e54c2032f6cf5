"""Packages whose public names load on first use (heavy dependencies stay unimported until needed)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<homes[name]>`` when ``name`` is first used.

    Example:
        >>> getattr_ = lazy_attributes("restpg_dspy.serving", {"split_decoding": "model_ids"})
        >>> getattr_("split_decoding")("local/x?repetition_penalty=1.2")
        ('local/x', {'repetition_penalty': 1.2})
    """

    def attribute(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute
