"""Counter-based random numbers: uniforms that are a pure function of (seed, step, token).

A GPU batch samples every row in one pass with the Gumbel-max trick; drawing the noise from a hash of the row's seed,
its step and the token (splitmix64's finalizer) keeps each row's sample a function of its own seed alone, whatever
shares its batch, without one generator call per row per step.
"""

from __future__ import annotations

import torch

# splitmix64's constants as signed 64-bit integers (torch has no unsigned 64-bit arithmetic on every device).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX_1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX_2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (``>>`` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer, in wrapping int64 arithmetic."""
    x = x ^ _shift_right(x, 30)
    x = x * _MIX_1
    x = x ^ _shift_right(x, 27)
    x = x * _MIX_2
    return x ^ _shift_right(x, 31)


def counter_uniforms(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), shape ``(rows, vocab)``: entry ``[r, v]`` hashes ``(seeds[r], steps[r], v)`` alone.

    Each value has 23 random bits, placed at the centre of one of 2**23 equal intervals, so neither 0 nor 1 occurs.

    Example:
        >>> u = counter_uniforms(torch.tensor([7, 8]), torch.tensor([0, 0]), 4)
        >>> alone = counter_uniforms(torch.tensor([8]), torch.tensor([0]), 4)
        >>> bool(((u > 0) & (u < 1)).all()), torch.equal(u[1], alone[0])
        (True, True)
    """
    rows = _mix64(seeds.long() * _GOLDEN + steps.long())
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.long) * _GOLDEN
    bits = _shift_right(_mix64(rows[:, None] + tokens[None, :]), 41)
    return (bits.to(torch.float32) + 0.5) / float(1 << 23)
