"""The miner keeps freed heap mapped: a frame's blocks reuse the last frame's pages (glibc ``mallopt``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from avminer.mining.heap import keep_freed_heap

# A fresh process per setting: mallopt is process-wide and cannot be undone.
_FAULTS = """
import resource, sys, threading
import numpy as np
from avminer.mining.heap import keep_freed_heap
took = keep_freed_heap(int(sys.argv[1]))

def frames(out):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        decoded = [np.ones((360, 480, 3), np.uint8) for _ in range(8)]  # one batch of decoded frames
        batch = np.stack(decoded)  # the engine stage's stack
        del decoded, batch
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

out = []
worker = threading.Thread(target=frames, args=(out,))
worker.start()
worker.join()
print(took, out[0])
"""


def _faults(keep_mb: int) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", _FAULTS, str(keep_mb)], capture_output=True, text=True,
                          check=True)
    took, faults = done.stdout.split()
    return took == "True", int(faults)


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_heap(0) is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_kept_heap_faults_in_one_batch_of_pages_not_one_per_batch() -> None:
    took_default, default = _faults(0)
    took_kept, kept = _faults(64)
    assert (took_default, took_kept) == (False, True)
    batch_pages = 2 * 8 * 360 * 480 * 3 // 4096  # the frames and their stack, once
    # Kept: the first batch faults its pages in, the other 39 reuse them.
    assert kept < 1.5 * batch_pages
    assert kept < 0.75 * default
