"""Model ids: the weights they name (a base model, or a LoRA adapter on it, by content) and the decoding settings
they carry.

An adapter is served under ``<base id>+lora-<content hash>``, so the same weights get the same id in every process
and caches carry across runs; settings that DSPy's request cannot carry ride after ``?``.

Example:
    >>> from restpg_dspy.serving.model_ids import split_decoding
    >>> split_decoding("local/SmolLM2-1a2b?repetition_penalty=1.2")
    ('local/SmolLM2-1a2b', {'repetition_penalty': 1.2})
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.models import home
from restpg_dspy.serving.sampling import SamplingParams

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_TAG = "+lora-"

# PEFT writes these set-valued settings in set order, which changes from process to process.
_BASE_PATH_KEY = "base_model_name_or_path"
_UNORDERED_CONFIG_KEYS = ("target_modules", "exclude_modules", "modules_to_save")


# Decoding settings that DSPy's canonical request cannot carry travel in the model id, after this separator
# (``<weights id>?no_repeat_ngram_size=4&repetition_penalty=1.2``): DSPy's cache and the evaluation cache key on the
# model id, so one setting's outputs are never served for another's.
DECODING_SEPARATOR = "?"
MODEL_ID_SETTINGS: dict[str, tuple[type, Any]] = {"repetition_penalty": (float, 1.0), "no_repeat_ngram_size": (int, 0)}


def split_decoding(model_id: str) -> tuple[str, dict[str, Any]]:
    """Split a model id into the weights it names and the decoding settings it carries.

    Example:
        >>> split_decoding("local/SmolLM2-1a2b?no_repeat_ngram_size=4&repetition_penalty=1.2")
        ('local/SmolLM2-1a2b', {'no_repeat_ngram_size': 4, 'repetition_penalty': 1.2})

    Raises:
        UsageError: a setting this package does not know, or a value of the wrong type.
    """
    weights, separator, query = model_id.partition(DECODING_SEPARATOR)
    settings: dict[str, Any] = {}
    for item in query.split("&") if separator else ():
        name, _, value = item.partition("=")
        if name not in MODEL_ID_SETTINGS:
            known = sorted(MODEL_ID_SETTINGS)
            raise UsageError(f"model id {model_id!r}: unknown decoding setting {name!r}; known: {known}")
        kind = MODEL_ID_SETTINGS[name][0]
        try:
            settings[name] = kind(value)
        except ValueError:
            raise UsageError(f"model id {model_id!r}: {name} must be {kind.__name__}, not {value!r}") from None
    return weights, settings


def with_decoding(model_id: str, **settings: Any) -> str:
    """``model_id`` carrying ``settings`` (over those it carries; a default value removes a setting).

    Example:
        >>> with_decoding("local/SmolLM2-1a2b", repetition_penalty=1.2, no_repeat_ngram_size=0)
        'local/SmolLM2-1a2b?repetition_penalty=1.2'
    """
    weights, current = split_decoding(model_id)
    merged = {**current, **settings}
    for name, value in merged.items():
        if name not in MODEL_ID_SETTINGS:
            raise UsageError(f"unknown decoding setting {name!r}; known: {sorted(MODEL_ID_SETTINGS)}")
        SamplingParams(max_tokens=1, **{name: MODEL_ID_SETTINGS[name][0](value)})  # refuses bad values by name
    kept = {n: MODEL_ID_SETTINGS[n][0](v) for n, v in sorted(merged.items()) if v != MODEL_ID_SETTINGS[n][1]}
    return weights + (DECODING_SEPARATOR + "&".join(f"{n}={v}" for n, v in kept.items()) if kept else "")


def adapter_hash(path: Path, *, with_base_path: bool = False) -> str:
    """Content hash of a saved LoRA adapter (its config, in a canonical form, and its weights), 12 hex digits.

    The same weights and settings give the same hash in every process and on every machine, so ids and caches carry
    across runs and homes: the config's ``base_model_name_or_path`` (where the base weights happened to lie) is left
    out, as the base weights are named by the id's own prefix.

    Args:
        path: The adapter's folder.
        with_base_path: The hash of earlier versions, which covered that path too (a run directory they wrote
            records it; its adapters are recognised by it).
    """
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = path / name
        if not file.exists():
            raise FileNotFoundError(f"{path} is not a saved adapter: {name} is missing")
        content = file.read_bytes()
        if name.endswith(".json"):
            config = json.loads(content)
            for key in _UNORDERED_CONFIG_KEYS:
                if isinstance(config.get(key), list):
                    config[key] = sorted(config[key])
            if not with_base_path:
                config.pop(_BASE_PATH_KEY, None)
            content = json.dumps(config, sort_keys=True).encode()
        digest.update(name.encode())
        digest.update(content)
    return digest.hexdigest()[:12]


def default_adapter_root() -> Path:
    """Where adapters are published when no output folder is given: ``<home>/adapters``."""
    return home() / "adapters"
