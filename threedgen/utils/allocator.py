"""Keep freed tensor memory in the process (glibc malloc), so CPU steps stop paying page faults.

A CPU training step allocates and frees dozens of 1-10 MB tensors (the Gaussian rasterizer's
per-pair buffers, the prior's activations). glibc serves blocks above its mmap threshold (128 KiB
until it adapts) with fresh ``mmap`` pages and gives freed heap tops back to the kernel above
128 KiB, so every step faults its working set in again (zeroed pages; ``sys`` time in
``/usr/bin/time``). Raising both thresholds keeps the pages. Measured with
``benchmarks/bench_gaussians.py`` and the README's main job (numbers in the README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where there is no glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    _done = ok
    return ok
