"""Keep freed memory for the next frame (glibc ``mallopt``), so the miner's large blocks do not fault.

Every frame allocates the same large blocks: a decoded image (518 KB at 480x360), the stacked batch
(~4 MB), engine outputs and scoring temporaries. glibc serves blocks over its mmap threshold (128 KB
until its dynamic threshold catches up, and only for sizes already freed once) with fresh ``mmap``
pages and returns heap memory over its trim threshold (128 KB) to the kernel, so the next frame faults
the same pages in again, one fault per 4 KB page — on a virtual machine a few µs each. Measured with
``avminer bench pipeline --backend null`` on the 2-core VM: the batch stack costs 135 µs a frame with the
defaults and 53 µs with the heap kept; radar disagreement 370 -> 140 µs a call.

Raising both thresholds makes those blocks come from the heap and stay mapped once freed. Memory
held is bounded by ``batcher.heap_keep_mb`` of free heap (above the in-flight data the queues bound).
Nothing happens off glibc (musl, macOS): the call is best effort.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 << 20
"""glibc refuses an mmap threshold over half its per-thread heap size (64 MB on 64-bit)."""


def keep_freed_heap(keep_mb: int) -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to ``keep_mb`` MB of it mapped once freed.

    Args:
        keep_mb: free heap kept mapped; 0 leaves the C library's defaults.

    Returns:
        True if glibc took both settings (False: 0, not glibc, or refused).
    """
    if keep_mb <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (no mallopt), or no C library found
        log.debug("mallopt not available: allocator left at its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep_mb << 20, (1 << 31) - 1)
    # mallopt returns 1 on success, 0 for a value it refuses.
    ok = bool(mallopt(_M_TRIM_THRESHOLD, keep) == 1 and mallopt(_M_MMAP_THRESHOLD, min(keep, MAX_MMAP_THRESHOLD)) == 1)
    if not ok:
        log.debug("mallopt refused the heap settings: allocator left at its defaults")
    return ok
