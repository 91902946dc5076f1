"""Let glibc keep freed memory for reuse, so that torch's per-update buffers stop page-faulting.

An SQL update allocates and frees activation buffers of 0.1 to 4 MB dozens of times. glibc's
defaults serve such sizes with fresh mmap pages (or trim the heap's top once they are freed),
so each update touches new pages again: about 250 page faults per Sawyer update at batch 128
on the project's VM. With the thresholds raised, freed buffers are reused and the faults stop
(measured: 5-9 % more updates/s on one CPU thread, docs/benchmarks.md). This is what the
PyTorch CPU tuning guide gets from jemalloc or tcmalloc, without preloading a library.
Memory is then handed back to the OS only for blocks above the mmap threshold (replay buffers).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper limit for it on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
TOP_PAD_BYTES = 64 * 1024 * 1024


def _glibc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is not glibc."""
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and all(
        mallopt(option, value) == 1 for option, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                                                         (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES)))


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS now (glibc's malloc_trim), e.g. before reading the RSS."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)
