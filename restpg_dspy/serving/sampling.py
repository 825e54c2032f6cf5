"""How one row of a batch chooses its tokens: its sampling settings, repetition controls and what it returns.

Every row keeps its own temperature, nucleus/top-k filter, token budget, stop strings and randomness, so a request's
sample depends on its own seed and not on which other requests share its batch. On the CPU each row draws from its
own ``torch.Generator``. On a GPU, where one small draw per row per step would stall the device, the whole batch
samples in one pass with the Gumbel-max trick, the noise of row ``r`` at step ``t`` for token ``v`` being a
counter-based hash of ``(seed_r, t, v)`` (:mod:`~restpg_dspy.serving.counter_noise`): still a function of the row's
own seed alone. The two devices give different samples for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from restpg_dspy.serving.counter_noise import counter_uniforms


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded.

    Attributes:
        max_tokens: Most new tokens to generate; reaching it finishes the row with reason ``"length"``.
        temperature: 0 decodes greedily; above 0 samples from the tempered distribution.
        top_p: Nucleus sampling mass (1.0 keeps every token).
        top_k: Keep only the k most likely tokens, ties to the lower token id (0 keeps every token).
        stop: Strings that end the completion; the text is cut before the first one found.
        seed: Seeds this row's generator; ``None`` draws fresh randomness.
        logprobs: ``None`` for no log-probabilities, otherwise how many top alternatives to report per token.
        repetition_penalty: As in transformers and vLLM: the logit of every token that occurs in the prompt or the
            completion so far is divided by it where positive and multiplied by it where negative (1.0: off).
        frequency_penalty: As in OpenAI's API: subtracted from a token's logit once per occurrence in the
            completion so far (0.0: off).
        presence_penalty: As in OpenAI's API: subtracted once from the logit of every token the completion holds.
        no_repeat_ngram_size: No token n-gram of this size occurs twice in the completion: a token that would
            complete one already there is never chosen (0: off). Unlike transformers' setting of that name, the
            prompt's n-grams are not banned, so a completion may still quote its prompt (an option, a title).

    Reported log-probabilities are those of the model's distribution before the repetition controls.
    """

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 turns it off), not {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 turns it off), not {self.no_repeat_ngram_size}")

    @property
    def controls_repetition(self) -> bool:
        """Whether any repetition control is on."""
        return (
            self.repetition_penalty != 1.0
            or bool(self.frequency_penalty)
            or bool(self.presence_penalty)
            or self.no_repeat_ngram_size > 0
        )


@dataclass
class TokenScore:
    """The log-probability of one generated token and its most likely alternatives (raw model distribution)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Completion:
    """One generated row.

    Attributes:
        text: The decoded completion, special tokens removed, cut before any stop string.
        token_ids: The generated token ids (without the end-of-sequence token).
        finish_reason: ``"stop"`` (end-of-sequence or a stop string) or ``"length"`` (token budget reached).
        prompt_tokens: Tokens in the prompt.
        scores: Per-token log-probabilities when requested, else ``None``.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    scores: list[TokenScore] | None = None


def banned_ngram_tokens(tokens: list[int], size: int) -> set[int]:
    """The tokens that would complete a ``size``-gram already in ``tokens`` (the next token's banned set).

    Example:
        >>> sorted(banned_ngram_tokens([5, 6, 7, 5, 6], 3))  # 5 6 was followed by 7: 5 6 7 would repeat
        [7]
        >>> banned_ngram_tokens([5, 6, 7], 3)
        set()
    """
    if size <= 0 or len(tokens) < size - 1:
        return set()
    prefix = tokens[len(tokens) - size + 1 :]
    return {tokens[i + size - 1] for i in range(len(tokens) - size + 1) if tokens[i : i + size - 1] == prefix}


def control_repetition(
    logits: torch.Tensor, params: list[SamplingParams], seen: list[set[int]], tokens: list[list[int]]
) -> torch.Tensor:
    """``logits`` (one row per entry of ``params``) after each row's repetition controls.

    ``seen[j]`` holds the tokens of row ``j``'s prompt and completion so far, ``tokens[j]`` its completion.
    """
    rows = [j for j, p in enumerate(params) if p.controls_repetition]
    if not rows:
        return logits
    logits = logits.clone()
    for j in rows:
        p, row = params[j], logits[j]
        if p.repetition_penalty != 1.0 and seen[j]:
            ids = torch.tensor(sorted(seen[j]), device=logits.device)
            values = row[ids]
            row[ids] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and tokens[j]:
            ids, counts = torch.tensor(tokens[j], device=logits.device).unique(return_counts=True)
            row[ids] -= p.frequency_penalty * counts.to(row.dtype) + p.presence_penalty
        banned = banned_ngram_tokens(tokens[j], p.no_repeat_ngram_size)
        if banned:
            row[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
    return logits


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator] | None,
    seeds: list[int],
    steps: list[int],
) -> list[int]:
    """Pick the next token of every row: greedy where temperature is 0, filtered sampling elsewhere.

    Rows sample from their ``generators`` when given, else by Gumbel-max with counter-based noise from
    ``(seeds[row], steps[row])`` in one pass over the batch.
    """
    chosen = logits.argmax(dim=-1)
    sampled = [row for row, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return chosen.tolist()
    index = torch.tensor(sampled, device=logits.device)
    temperatures = torch.tensor([params[r].temperature for r in sampled], device=logits.device)
    scaled = logits.index_select(0, index) / temperatures[:, None]
    vocab = scaled.shape[-1]
    kept = [params[r].top_k if 0 < params[r].top_k < vocab else vocab for r in sampled]
    top_k = torch.tensor(kept, device=logits.device)
    top_p = torch.tensor([params[r].top_p for r in sampled], device=logits.device)
    if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
        # A stable sort ranks tied logits by token id, as argmax does: top_k=1 is greedy even where bfloat16 ties.
        sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)
        drop = torch.arange(vocab, device=logits.device)[None, :] >= top_k[:, None]
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the most likely token always stays.
        drop |= ((probs.cumsum(dim=-1) - probs) >= top_p[:, None]) & (top_p[:, None] < 1.0)
        scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if generators is None:
        row_seeds = torch.tensor([seeds[r] for r in sampled], device=logits.device)
        row_steps = torch.tensor([steps[r] for r in sampled], device=logits.device)
        noise = -torch.log(-torch.log(counter_uniforms(row_seeds, row_steps, vocab)))
        chosen.index_copy_(0, index, (scaled + noise).argmax(dim=-1))
        return chosen.tolist()
    picks = chosen.tolist()
    probs = scaled.softmax(dim=-1)
    for j, row in enumerate(sampled):
        picks[row] = int(torch.multinomial(probs[j], 1, generator=generators[row]).item())
    return picks


def hits_stop(tokenizer: Any, token_ids: list[int], stop: tuple[str, ...]) -> bool:
    window = max(len(s) for s in stop) + 2  # a token spans at least one character
    tail = tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
    return any(s in tail for s in stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text
