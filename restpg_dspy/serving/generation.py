"""Batched generation from a causal LM with per-row settings (static batching).

:func:`generate` decodes a list of prompts together: rows with the same prompt (several samples of one input) share
one prefill, and rows leave the batch, and its KV cache, as soon as they finish (:class:`~restpg_dspy.serving.
decoding.DecodingBatch`). How each row chooses its tokens is in :mod:`~restpg_dspy.serving.sampling`.
"""

from __future__ import annotations

from typing import Any

import torch

from restpg_dspy.serving.decoding import KV_CACHES, DecodingBatch
from restpg_dspy.serving.sampling import Completion, SamplingParams, TokenScore, banned_ngram_tokens

__all__ = ["KV_CACHES", "Completion", "SamplingParams", "TokenScore", "banned_ngram_tokens", "generate"]


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    params: list[SamplingParams],
    eos_token_ids: set[int],
    adapters: list[str] | None = None,
    kv_cache: str = "reserved",
    counters: dict[str, int] | None = None,
) -> list[Completion]:
    """Generate one completion per prompt in a single left-padded batch with a shared KV cache.

    Each distinct prompt is prefilled once (logits of its last position only) and its cache copied to every row
    that asked for it, so ``n`` samples of one prompt cost one prompt's prefill.

    Args:
        model: A ``transformers`` causal LM (a PEFT model works too).
        tokenizer: Its tokenizer, used to decode and to check stop strings.
        prompts: Token ids of each prompt (already chat-formatted).
        params: One :class:`SamplingParams` per prompt.
        eos_token_ids: Tokens that end a completion with reason ``"stop"``.
        adapters: For a PEFT ``model``, the name of the loaded adapter each prompt is generated with
            (``"__base__"``: the base weights), so that one batch serves several adapters; ``None``: the active one.
        kv_cache: ``"reserved"`` allocates each layer's cache once, with room for the batch's token budget
            (:mod:`~restpg_dspy.serving.kv_cache`); ``"dynamic"`` grows it by concatenation at every step
            (transformers' default, slower). The tokens are the same.
        counters: Where given, its ``steps`` and ``row_steps`` grow by the decoding steps run and the rows that
            took part in each (their ratio: how many rows shared a step on average).

    Returns:
        One :class:`Completion` per prompt, in order.
    """
    batch = DecodingBatch(model, tokenizer, eos_token_ids, kv_cache=kv_cache, mixed_adapters=adapters is not None)
    ids = batch.add(prompts, params, adapters)
    done: dict[int, Completion] = {}
    while len(batch):
        done.update(batch.step())
    if counters is not None:
        counters["steps"] = counters.get("steps", 0) + batch.steps
        counters["row_steps"] = counters.get("row_steps", 0) + batch.row_steps
    return [done[row] for row in ids]
