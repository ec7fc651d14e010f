"""glibc's malloc tuned for PyTorch on the CPU: memory a step frees is kept for the next step.

PyTorch allocates CPU tensors with plain ``malloc``. glibc serves a block above its mmap threshold
with a fresh ``mmap`` and trims the heap's top back to the system once more than its trim threshold
lies free there. A training or decoding step allocates and frees the same activation-sized blocks
every time, so with glibc's defaults it pays page faults, step after step, for memory it has just
returned (PyTorch's performance guide recommends jemalloc or tcmalloc for the same reason; both need
a system package and ``LD_PRELOAD``). :func:`keep_freed_memory` raises the two thresholds with
glibc's own ``mallopt``: blocks up to 32 MiB come from the heap and up to 256 MiB of freed heap is
kept. Only where the memory goes changes, never a value: outputs stay bit for bit the same.

Every stage calls it (:func:`detox.common.cli.run_stage`), and so do the benchmark scripts, for both
variants they compare. It leaves malloc alone where the user chose an allocator or glibc's settings
(``LD_PRELOAD``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), with
``DETOX_MALLOC=default``, and off glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (half its heap size)
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
SWITCH = "DETOX_MALLOC"  # "default" leaves glibc's thresholds as they are


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; return whether they were set."""
    if os.environ.get(SWITCH) == "default" or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process already runs on
    if mallopt is None:
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
