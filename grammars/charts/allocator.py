"""Keep freed heap memory mapped between chart passes (glibc only; issue 17).

Why: one inside pass (forward + outside) allocates and frees tens of MB of short-lived tensors
(chart layouts, per-width products, gradients). Under glibc's defaults the freed memory goes
back to the OS (large chunks are munmap'd, the heap top is trimmed), so the next pass
page-faults on every page again: 13-24 thousand minor faults per pass at length 40, batch 32,
NT=30, T=60, and 1.7x its time (RESULTS.md / notes, issue 17). Fixed mmap and trim thresholds
keep those pages in the heap, which is what jemalloc or tcmalloc (PyTorch's CPU tuning guide)
would do. The process then keeps its peak heap instead of shrinking after each step.

Process-wide, so it is applied once, on the first chart pass, and can be refused with
GFNEM_MALLOC_TUNING=0 (the benchmarks use that to measure the "before").
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1        # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20    # glibc's ceiling on 64-bit; larger blocks are still mmap'd
TRIM_THRESHOLD = 1 << 30

_state: dict = {"applied": None}


def retain_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in force."""
    if _state["applied"] is None:
        _state["applied"] = _apply()
    return _state["applied"]


def _apply() -> bool:
    if os.environ.get("GFNEM_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # the mmap threshold first: setting it also turns off glibc's dynamic adjustment, which
    # would otherwise keep large blocks on mmap once the trim threshold is fixed
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
