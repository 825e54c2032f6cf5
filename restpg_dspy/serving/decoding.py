"""A batch of rows decoding together, which rows may join between steps and leave as soon as they finish.

:func:`~restpg_dspy.serving.generation.generate` adds every row at once and steps until all have finished (static
batching); the local engine with ``batching="continuous"`` also adds the requests that arrive while a batch decodes,
so a finished row's slot is taken by the next request instead of staying empty until the longest row ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from restpg_dspy.serving.kv_cache import join_caches, reserved_cache
from restpg_dspy.serving.models import accepts_logits_to_keep
from restpg_dspy.serving.sampling import (
    Completion,
    SamplingParams,
    TokenScore,
    choose_tokens,
    control_repetition,
    cut_at_stop,
    hits_stop,
)

KV_CACHES = ("reserved", "dynamic")


@dataclass
class _Row:
    id: int
    prompt_tokens: int
    params: SamplingParams
    seed: int
    generator: torch.Generator | None
    adapter: str
    seen: set[int]
    tokens: list[int] = field(default_factory=list)
    scores: list[TokenScore] | None = None
    finish: str = "length"


class DecodingBatch:
    """Rows that decode one token per :meth:`step` in one forward pass, sharing a left-padded KV cache.

    Args:
        model: A ``transformers`` causal LM (a PEFT model works too).
        tokenizer: Its tokenizer, used to pad, decode and check stop strings.
        eos_token_ids: Tokens that end a completion with reason ``"stop"``.
        kv_cache: ``"reserved"`` (each layer allocated once per prefill or join, with room for the rows' budgets:
            :mod:`~restpg_dspy.serving.kv_cache`) or ``"dynamic"`` (transformers' cache). The tokens are the same.
        mixed_adapters: Each row names the loaded PEFT adapter it decodes with (PEFT's mixed-batch LoRA).
    """

    def __init__(
        self, model: Any, tokenizer: Any, eos_token_ids: set[int], kv_cache: str = "reserved", mixed_adapters=False
    ):
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, not {kv_cache!r}")
        self.model, self.tokenizer, self.eos_token_ids = model, tokenizer, eos_token_ids
        self.kv_cache, self.mixed_adapters = kv_cache, mixed_adapters
        self.rows: list[_Row] = []
        self.steps = 0  # decoding steps run
        self.row_steps = 0  # rows that took part in each step, added up: row_steps / steps rows share a step
        self._next_id = 0
        self._cache: Any = None
        self._attention = self._positions = self._logits = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self, prompts: list[list[int]], params: list[SamplingParams], adapters: list[str] | None = None
    ) -> list[int]:
        """Prefill ``prompts`` (each distinct prompt once) and add one row per prompt; return the rows' ids."""
        if len(prompts) != len(params):
            raise ValueError("generate needs one SamplingParams per prompt")
        device = self.model.device
        adapters = adapters or [""] * len(prompts)
        # A prompt's prefill is shared by the rows that generate it with the same weights.
        distinct: dict[tuple[str, tuple[int, ...]], int] = {}
        source = [distinct.setdefault(key, len(distinct)) for key in zip(adapters, map(tuple, prompts), strict=True)]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(distinct), width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros((len(distinct), width), dtype=torch.long, device=device)
        for row, (_, prompt) in enumerate(distinct):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            attention[row, width - len(prompt) :] = 1
        positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
        options = {"logits_to_keep": 1} if accepts_logits_to_keep(self.model) else {}
        if self.mixed_adapters:
            options["adapter_names"] = [adapter for adapter, _ in distinct]
        budget = max(p.max_tokens for p in params)
        cache = reserved_cache(self.model.config, budget) if self.kv_cache == "reserved" else None
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **options,
        )
        cache, logits = output.past_key_values, output.logits[:, -1, :]
        if len(distinct) < len(prompts):
            rows = torch.tensor(source, device=device)
            cache.batch_select_indices(rows)
            attention, positions, logits = attention[rows], positions[rows], logits[rows]
        positions = positions[:, -1:]
        if self._cache is None:
            self._cache, self._attention, self._positions, self._logits = cache, attention, positions, logits
        else:
            reserve = max(budget, *(row.params.max_tokens - len(row.tokens) for row in self.rows))
            self._cache, self._attention = join_caches(self._cache, self._attention, cache, attention, reserve)
            self._positions = torch.cat([self._positions, positions])
            self._logits = torch.cat([self._logits, logits])
        ids = []
        for prompt, p, adapter in zip(prompts, params, adapters, strict=True):
            seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            generator = torch.Generator(device=device).manual_seed(seed) if device.type == "cpu" else None
            seen = set(prompt) if p.repetition_penalty != 1.0 else set()
            scores = [] if p.logprobs is not None else None
            self.rows.append(_Row(self._next_id, len(prompt), p, seed, generator, adapter, seen, scores=scores))
            ids.append(self._next_id)
            self._next_id += 1
        return ids

    @torch.inference_mode()
    def step(self) -> list[tuple[int, Completion]]:
        """Choose every row's next token; return the rows that finished (by id), and decode one step for the rest."""
        logits = self._logits.float()
        params = [row.params for row in self.rows]
        next_ids = choose_tokens(
            control_repetition(logits, params, [row.seen for row in self.rows], [row.tokens for row in self.rows]),
            params,
            [row.generator for row in self.rows] if self.model.device.type == "cpu" else None,
            [row.seed for row in self.rows],
            [len(row.tokens) for row in self.rows],
        )
        self.steps += 1
        self.row_steps += len(self.rows)
        keep, finished = [], []
        for j, (row, token) in enumerate(zip(self.rows, next_ids, strict=True)):
            if self._advance(row, token, logits[j]):
                keep.append(j)
            else:
                finished.append((row.id, self._completion(row)))
        if not keep:
            self.rows, self._cache = [], None
            return finished
        device = self.model.device
        if len(keep) < len(self.rows):
            selected = torch.tensor(keep, device=device)
            self._cache.batch_select_indices(selected)
            self._attention = self._attention.index_select(0, selected)
            self._positions = self._positions.index_select(0, selected)
            self.rows = [self.rows[j] for j in keep]
        self._attention = torch.cat([self._attention, self._attention.new_ones((len(keep), 1))], dim=-1)
        self._positions = self._positions + 1
        options = {"adapter_names": [row.adapter for row in self.rows]} if self.mixed_adapters else {}
        output = self.model(
            input_ids=torch.tensor([[next_ids[j]] for j in keep], device=device),
            attention_mask=self._attention,
            position_ids=self._positions,
            past_key_values=self._cache,
            use_cache=True,
            **options,
        )
        self._logits = output.logits[:, -1, :]
        return finished

    def _advance(self, row: _Row, token: int, logits: torch.Tensor) -> bool:
        """Record ``token`` for ``row``; whether the row goes on decoding."""
        p = row.params
        if row.scores is not None:
            logprobs = logits.log_softmax(dim=-1)
            top = torch.topk(logprobs, p.logprobs) if p.logprobs else None
            alternatives = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
            row.scores.append(TokenScore(token, float(logprobs[token]), alternatives))
        if token in self.eos_token_ids:
            row.finish = "stop"
            return False
        row.tokens.append(token)
        if p.repetition_penalty != 1.0:
            row.seen.add(token)
        if p.stop and hits_stop(self.tokenizer, row.tokens, p.stop):
            row.finish = "stop"
            return False
        return len(row.tokens) < p.max_tokens

    def _completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if row.params.stop:
            text = cut_at_stop(text, row.params.stop)
        return Completion(text, row.tokens, row.finish, row.prompt_tokens, row.scores)
