"""glibc malloc tuning for chunked streams, applied by our entry points at start-up.

By default glibc serves every allocation above a dynamic threshold with its own mmap and returns it with
munmap, so each 1 MiB chunk costs page faults; keeping such buffers on the heap measured 2.7× faster
streaming (shared/reference/figures.md). Above 32 MiB (glibc's ceiling for this knob), allocations, i.e.
whole tensors, still get their own mapping and are returned to the OS when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 128 << 20


def tune_malloc() -> bool:
    """Returns True when the settings took effect (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
