"""Handing memory that a finished stage freed back to the operating system.

A LoRA step on a CPU allocates gigabytes of activations in many medium-sized blocks. glibc keeps blocks freed by a
thread in that thread's arena, and DSPy runs every fine-tuning job in a new thread, so without a trim each M-step
of a long run left its whole peak resident: the demo's third training reached 24 GB where one needs 11.
:func:`release_memory` is called after each training; ``benchmarks/training_memory.py`` measures the difference.

Example:
    >>> from restpg_dspy.memory import release_memory
    >>> release_memory()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from collections.abc import Callable


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
