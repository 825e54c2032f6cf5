"""Handing memory that a finished stage freed back to the operating system.

A LoRA step on a CPU allocates gigabytes of activations in many medium-sized blocks. glibc keeps blocks freed by a
thread in that thread's arena, and DSPy runs every fine-tuning job in a new thread, so without a trim each M-step
of a long run left its whole peak resident: the demo's third training reached 24 GB where one needs 11.
:func:`release_memory` is called after each training; ``benchmarks/training_memory.py`` measures the difference.

A trim returns only free pages at the heap's top. Worse, glibc raises its ``mmap`` threshold to the size of each large
block freed, so the next tensors of that size come from the heap, whose freed holes the process keeps: one training
step of 4 rows of 1,088 tokens with checkpointing peaked at 7.2 GiB resident that way, and at 2.1 GiB with the
threshold held at 1 MiB (same speed). :func:`hold_mmap_threshold` holds it for the process; every local model load
calls it.

Example:
    >>> from restpg_dspy.memory import release_memory
    >>> release_memory()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys
from collections.abc import Callable

MMAP_THRESHOLD_BYTES = 1 << 20  # blocks from 1 MiB up (activations, logits, caches) are mapped and unmapped
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
DYNAMIC_MALLOC_ENV = "RESTPG_DSPY_DYNAMIC_MALLOC"


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release_memory() -> None:
    """Collect unreachable objects (a trainer holds reference cycles), empty the CUDA cache when torch uses one, and
    return the C allocator's free pages to the operating system."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def hold_mmap_threshold() -> bool:
    """Make glibc map every block of 1 MiB or more and unmap it when freed, for the rest of the process.

    Without it, the process keeps (as heap it never returns) the memory of the largest tensors it freed, and a
    CPU training's resident memory grows far past what it uses at once (see the module docs). A user's own
    ``MALLOC_MMAP_THRESHOLD_`` is left alone, as is glibc's dynamic threshold when ``RESTPG_DSPY_DYNAMIC_MALLOC`` is
    set; other C libraries (macOS, musl) are not touched.

    Returns:
        Whether the threshold is now held by this call.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get(DYNAMIC_MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
