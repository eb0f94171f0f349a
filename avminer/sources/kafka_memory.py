"""Keep freed fetch buffers in the process instead of handing them back to the kernel (glibc only).

Why: kafka-python turns every fetch response into several multi-megabyte buffers (the joined socket
reads, the zero-filled ``KafkaBytes`` frame, its ``bytes`` copy, each record batch's ``bytearray``
copy) and frees them a moment later. tansu answers a fetch of 48.6 KB camera frames with ~6 MB, so
~25-30 MB are allocated and freed per fetch. glibc's malloc hands memory that large back to the kernel
(``munmap`` of a chunk above ``M_MMAP_THRESHOLD``, or trimming the heap top above
``M_TRIM_THRESHOLD``; its dynamic thresholds follow the largest chunk freed, the trim threshold at
twice that, below this working set), and the next fetch takes every page back with a page fault and a kernel zero-fill. Measured on
a consumer of 2,000 such frames (README, "Ingest"): 35-45 minor page faults and ~100-140 µs of system
CPU a message, two thirds of kafka-python's CPU; with the thresholds below, ~0 faults once the first
fetches have run, ~10-40 µs of system CPU, and no higher peak RSS (the same pages are reused rather
than mapped anew).

What :func:`keep_fetch_memory` does: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (glibc's ceiling for the
dynamic threshold on 64-bit: fetch-sized chunks come from the heap, not from fresh mappings) and
``mallopt(M_TRIM_THRESHOLD, 64 MiB)`` (up to that much free memory stays at the top of each heap for the
next fetch). These are documented glibc settings (``mallopt(3)``) of the whole process, not a change to
kafka-python. The cost: each malloc arena may keep up to 64 MiB it no longer uses, and a fetch response
above 32 MiB (``fetch_max_bytes`` is 50 MB by default, reached with many partitions) is still mapped
afresh. On a C library other than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers, from glibc's ``<malloc.h>``."""

MMAP_THRESHOLD_BYTES = 32 << 20
"""Chunks below this come from the heap (glibc accepts at most 32 MiB on 64-bit)."""

TRIM_THRESHOLD_BYTES = 64 << 20
"""Free memory kept at the top of a heap before it is returned to the kernel."""

_lock = threading.Lock()
_outcome: str | None = None


def glibc_version() -> str | None:
    """The running glibc's version (``"2.36"``), or None under another C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a glibc name on this platform
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split(" ", 1)[1]


def keep_fetch_memory() -> str:
    """Set the process's malloc thresholds once (see the module docstring); later calls change nothing.

    Returns:
        What the process runs with, for logs and the ingest bench: ``"kept (glibc 2.36: mmap threshold
        32 MiB, trim threshold 64 MiB)"``, or why it runs with the C library's defaults.
    """
    global _outcome
    with _lock:
        if _outcome is None:
            _outcome = _apply()
            log.info("malloc for Kafka fetch buffers: %s", _outcome)
        return _outcome


def _apply() -> str:
    version = glibc_version()
    if version is None:
        return "C library defaults (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        return f"C library defaults (mallopt not found: {exc})"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success, 0 for a value out of range. Either threshold set alone ends glibc's
    # dynamic adjustment of both and measured worse than the defaults, so the trim threshold is set only
    # after the mmap threshold was taken (it is refused on 32-bit, whose ceiling is 16 MiB).
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return f"C library defaults (glibc {version} refused M_MMAP_THRESHOLD {MMAP_THRESHOLD_BYTES})"
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return f"glibc {version}: mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, M_TRIM_THRESHOLD refused"
    return (f"kept (glibc {version}: mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, "
            f"trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB)")
