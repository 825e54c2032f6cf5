"""Serving: the engines behind ``restpg_dspy.lm(...)`` and the seam between them and ``dspy.LM``.

Programs count prompts in the served model's tokens, and the optimizer registers each adapter it trains (or finds in
a run directory) and samples with the returned model id. They ask only for what :class:`AdapterServing` names, so the
local engine, vLLM and a future engine are equals.

Modules: ``backends`` (``restpg_dspy.lm`` and its backend strings), ``models`` (where local models come from),
``generation`` (batched sampling with the local model), ``queue`` (what the engines share), ``engine`` (the local
engine), ``vllm_engine`` and ``vllm_server`` (vLLM in the process or behind its server), ``model_ids`` (model ids
and adapter hashes) and ``protocol`` (:class:`AdapterServing`).

Example:
    >>> import dspy
    >>> from restpg_dspy.serving import serving_engine
    >>> serving_engine(dspy.LM("openai/gpt-4o-mini")) is None  # an API model serves no adapters
    True
"""

from restpg_dspy.lazy import lazy_attributes

# Where each public name lives; they load on first use, so ``models`` and ``generation`` import without DSPy (a GPU
# machine may have torch and transformers only).
_HOMES = {
    "ADAPTER_FILES": "model_ids",
    "ADAPTER_TAG": "model_ids",
    "DECODING_SEPARATOR": "model_ids",
    "MODEL_ID_SETTINGS": "model_ids",
    "adapter_hash": "model_ids",
    "default_adapter_root": "model_ids",
    "split_decoding": "model_ids",
    "with_decoding": "model_ids",
    "AdapterServing": "protocol",
    "serving_engine": "protocol",
    "Job": "queue",
    "QueuedEngine": "queue",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes(__name__, _HOMES)
