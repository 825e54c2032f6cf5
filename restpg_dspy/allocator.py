"""The memory allocator of a ``restpg`` process: jemalloc where the machine has it, glibc's malloc otherwise.

A training step frees and re-allocates tensors of hundreds of MB. Under glibc's malloc every block of 1 MiB or more
gets a fresh ``mmap`` and is returned on free (the threshold :func:`restpg_dspy.memory.hold_mmap_threshold` holds, for
memory's sake), so each step faults its pages in from the kernel again; jemalloc keeps freed pages for reuse and
returns them after :data:`JEMALLOC_CONF`'s decay time (glibc's ``mallopt`` and ``malloc_trim`` then act on nothing).
``benchmarks/allocator.py`` measures the difference side by side. An allocator is chosen when a process starts, so
the ``restpg`` command starts itself again with jemalloc preloaded (once: the new process finds it loaded).
``RESTPG_ALLOCATOR=system`` keeps glibc's; a Python program of your own can preload it the same way::

    LD_PRELOAD=$(python -c "from restpg_dspy.allocator import find_jemalloc; print(find_jemalloc())") python train.py

Example:
    >>> from restpg_dspy.allocator import allocator_env
    >>> allocator_env({"RESTPG_ALLOCATOR": "system"}) is None
    True
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# Freed pages go back to the kernel after 30 s unused, so a training's steps reuse them while a long run's resident
# memory still shrinks between stages. Blocks over 8 MiB (logits, activations) would otherwise go to jemalloc's
# separate arena for huge blocks, which returns them at once: oversize_threshold 0 keeps them with the rest.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:30000,muzzy_decay_ms:30000,oversize_threshold:0"
_SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_jemalloc() -> str | None:
    """The path of the machine's ``libjemalloc.so``, or None when it has none."""
    for folder in _SEARCH:
        for name in ("libjemalloc.so.2", "libjemalloc.so"):
            if Path(folder, name).is_file():
                return str(Path(folder, name))
    return ctypes.util.find_library("jemalloc")


def allocator_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to start this process again with jemalloc, or None when nothing needs to change.

    Nothing changes when ``RESTPG_ALLOCATOR`` is ``system``, when ``LD_PRELOAD`` already names a jemalloc, or when
    the machine has none. A ``MALLOC_CONF`` of the caller's own is kept.
    """
    if environ.get("RESTPG_ALLOCATOR", "jemalloc") == "system" or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    library = find_jemalloc()
    if library is None or not Path(library).is_absolute():
        return None
    preload = " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    return {**environ, "LD_PRELOAD": preload, "MALLOC_CONF": environ.get("MALLOC_CONF", JEMALLOC_CONF)}


def restart_with_jemalloc() -> None:
    """Replace this process by the same command with jemalloc preloaded, when :func:`allocator_env` says so."""
    env = allocator_env(os.environ)
    if env is not None and sys.argv and Path(sys.argv[0]).is_file():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
