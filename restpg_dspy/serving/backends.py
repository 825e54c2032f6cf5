"""Backends by string: the embedded model, any local Hugging Face model, or any LiteLLM model.

Example:
    >>> import restpg_dspy
    >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> other = restpg_dspy.lm("local:/models/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> judge = restpg_dspy.lm("openai/gpt-4o-mini")  # doctest: +SKIP
    >>> restpg_dspy.lm("oracle:0.3").model  # the implicit_choice oracle teacher, 30% of its notes wrong
    'oracle/implicit_choice-notes2-noise0.3-seed0'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.engine import LocalEngine
from restpg_dspy.serving.model_ids import MODEL_ID_SETTINGS, with_decoding
from restpg_dspy.serving.protocol import serving_engine
from restpg_dspy.training.provider import PEFTProvider

LOCAL_PREFIX = "local:"
VLLM_PREFIX = "vllm:"
VLLM_SERVER_PREFIX = "vllm-server:"
ORACLE = "oracle"
EVIDENCE = "evidence"
# Settings that never change what an LM answers: per-call sampling ids and credentials (never written anywhere).
_UNSCORED_SETTINGS = ("rollout_id", "api_key", "api_base", "base_url", "headers", "extra_headers")


def lm_identity(lm: dspy.LM | None) -> dict[str, Any] | None:
    """What decides an LM's answers: its model id (local ids name adapter hashes) and generation settings.

    Credentials and endpoints are left out, so an identity can be written to run directories and cache keys.

    Example:
        >>> import dspy
        >>> lm_identity(dspy.LM("openai/gpt-4o-mini", temperature=0.0, max_tokens=16, api_key="sk-secret"))
        {'model': 'openai/gpt-4o-mini', 'settings': {'max_tokens': 16, 'temperature': 0.0}}
    """
    if lm is None:
        return None
    settings = {k: v for k, v in sorted(getattr(lm, "kwargs", {}).items()) if k not in _UNSCORED_SETTINGS}
    return {"model": lm.model, "settings": json.loads(json.dumps(settings, default=str))}


def lm(
    spec: str = "local",
    *,
    temperature: float = 0.0,
    max_tokens: int = 256,
    adapter: str | Path | None = None,
    **kwargs: Any,
) -> dspy.LM:
    """Return a ``dspy.LM`` for a backend string.

    Args:
        spec: ``"local"`` serves the embedded SmolLM2-135M-Instruct; ``"local:<folder or hf id>"`` serves any
            causal LM with a chat template (trainable with LoRA through ``lm.finetune``); ``"vllm:<folder, hf id or
            'local'>"`` samples through vLLM in this process (:class:`~restpg_dspy.serving.vllm_engine.VLLMEngine`);
            ``"vllm-server:<url>"`` through a running ``vllm serve`` (pass ``model=`` the folder it serves,
            :class:`~restpg_dspy.serving.vllm_server.VLLMServerEngine`); ``"oracle"`` (or ``"oracle:<noise>"``) is the
            oracle teacher of the ``implicit_choice`` task (:func:`restpg_dspy.data.oracle_teacher`; ``seed=`` picks its
            noisy notes), standing in for a large teacher LM offline; ``"evidence"`` the evidence teacher for any task
            with a profile (:func:`restpg_dspy.data.evidence_teacher`), another offline stand-in; anything else is
            passed to ``dspy.LM`` (LiteLLM / native providers), e.g. ``"openai/gpt-4o-mini"``. vLLM backends sample but
            do not train: pass them to REST-PG as ``sampler=``.
        temperature: Default sampling temperature.
        max_tokens: Default token budget per completion (long-form tasks such as LongLaMP abstracts may want 512).
        adapter: For backends that serve adapters, the folder of a saved LoRA adapter to serve on the base model.
        **kwargs: The engine's settings (for ``local``: ``dtype``, ``device``, ``max_batch_size``,
            ``batch_window_ms``, ``default_max_tokens``, ``merged_adapters``, ``max_loaded_adapters``; for vLLM: see
            its engine class), the repetition controls ``repetition_penalty`` and ``no_repeat_ngram_size`` (see
            :func:`with_repetition_controls`), and any ``dspy.LM`` keyword (``cache``, ``frequency_penalty``,
            ``presence_penalty``, ...); for API backends, ``dspy.LM`` keywords.

    Returns:
        A ``dspy.LM``. LMs with the same backend, model and engine settings share one engine (one loaded model).
    """
    if spec == ORACLE or spec.startswith(f"{ORACLE}:"):
        from restpg_dspy.data.oracle import oracle_teacher

        noise = spec.partition(":")[2]
        try:
            return oracle_teacher(noise=float(noise) if noise else 0.0, seed=kwargs.get("seed", 0))
        except ValueError as err:
            raise UsageError(f"backend {spec!r}: 'oracle:<noise>' takes a fraction in [0, 1] ({err})") from None
    if spec == EVIDENCE:
        from restpg_dspy.data.evidence import evidence_teacher

        return evidence_teacher()
    if spec.startswith(VLLM_SERVER_PREFIX):
        from restpg_dspy.serving.vllm_server import VLLMServerEngine

        url = spec.removeprefix(VLLM_SERVER_PREFIX)
        engine = VLLMServerEngine.shared(url, **_engine_settings(VLLMServerEngine, kwargs))
        extra = {}
    elif spec.startswith(VLLM_PREFIX):
        from restpg_dspy.serving.vllm_engine import VLLMEngine

        engine = VLLMEngine.shared(spec.removeprefix(VLLM_PREFIX) or "local", **_engine_settings(VLLMEngine, kwargs))
        extra = {}
    elif spec == "local" or spec.startswith(LOCAL_PREFIX):
        engine = LocalEngine.shared(spec.removeprefix(LOCAL_PREFIX) or "local", **_engine_settings(LocalEngine, kwargs))
        extra = {"provider": PEFTProvider(engine)}
    else:
        if adapter is not None:
            raise UsageError(f"adapter= needs a backend that serves adapters ('local...' or 'vllm:...'), not {spec!r}")
        return dspy.LM(spec, temperature=temperature, max_tokens=max_tokens, **kwargs)
    controls = {name: kwargs.pop(name) for name in MODEL_ID_SETTINGS if name in kwargs}
    return dspy.LM(
        with_decoding(engine.register_adapter(adapter) if adapter is not None else engine.base_id, **controls),
        engine=engine,
        temperature=temperature,
        max_tokens=max_tokens,
        **extra,
        **kwargs,
    )


def with_repetition_controls(
    lm: dspy.LM, *, repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None
) -> dspy.LM:
    """A copy of ``lm`` (served by this package's engines) with these repetition controls, the others kept.

    DSPy's request carries ``frequency_penalty`` and ``presence_penalty`` (set them per LM or per call, as any
    setting); the two controls here travel in the model id instead, so they are part of every cache key.

    Args:
        lm: An LM from :func:`lm` on ``local``, ``vllm:`` or ``vllm-server:``.
        repetition_penalty: As in transformers and vLLM (1.0: off).
        no_repeat_ngram_size: No n-gram of this size twice in a completion (0: off; the local engine only: vLLM
            has no such setting and refuses it).

    Example:
        >>> import restpg_dspy
        >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
        >>> restpg_dspy.with_repetition_controls(student, repetition_penalty=1.2).model  # doctest: +SKIP
        'local/SmolLM2-135M-Instruct-02abf71a?repetition_penalty=1.2'
    """
    if serving_engine(lm) is None:
        raise UsageError(f"{lm.model!r} is not served by this package's engines: it has no repetition controls here")
    settings = {"repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
    return lm.copy(model=with_decoding(lm.model, **{k: v for k, v in settings.items() if v is not None}))


def _engine_settings(engine_class: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the engine's own settings out of ``kwargs``."""
    return {name: kwargs.pop(name) for name in engine_class.setting_defaults() if name in kwargs}
