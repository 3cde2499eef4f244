"""Process settings for running on a host CPU: glibc's malloc tuned for XLA's per-call buffers.

XLA:CPU allocates every call's temporaries and outputs anew (one jitted R50-FPN training step:
about 2 GB) and frees them at the end. glibc serves blocks above 32 MB with fresh `mmap`s and
gives them back with `munmap`, so every step page-faults its whole working set again (measured:
~490k minor faults and 1.2-1.5 s of system time per R50-FPN training step at 512 px, batch 2;
slower still when another process — a data loader, a second framework — churns memory beside
it). `tune_host_allocator` makes freed memory stay in the process for the next step, as the
GPU allocators of JAX and PyTorch do: large blocks come from the heap instead of `mmap`, and the
heap is never trimmed. The cost is that the process keeps its peak memory until it exits, which
is what a training or evaluation process wants; the entry point applies it unless
`config.runtime.tune_host_allocator` is False. A library user's own process is left alone
unless they call it.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import sys

# <malloc.h> parameter numbers (glibc): see `man 3 mallopt`.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# (parameter, value): one arena (thread arenas cannot grow a heap past 64 MB without mmap), no
# mmap for any block, and trimming off (-1: "disables trimming completely", man 3 mallopt).
TUNED_MALLOPT: tuple[tuple[int, int], ...] = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0),
                                              (M_TRIM_THRESHOLD, -1))


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the only one whose mallopt we rely on)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: mallopt is absent or a no-op
    return libc


def tune_host_allocator() -> bool:
    """Applies `TUNED_MALLOPT` to this process; True when glibc accepted every setting.

    Affects blocks allocated from now on. A no-op returning False on other C libraries and
    operating systems (their allocators are left as they are).
    """
    libc = _glibc()
    if libc is None:
        logging.info("host allocator left as is: not glibc")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = all(libc.mallopt(param, value) == 1 for param, value in TUNED_MALLOPT)
    logging.info("host allocator: freed memory kept for reuse (glibc mallopt %s)",
                 "applied" if ok else "partly refused")
    return ok
