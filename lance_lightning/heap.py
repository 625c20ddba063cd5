"""Keep a DataLoader worker's freed memory for its next batch instead of handing it back to the OS.

Why: a worker's transform allocates the same large buffers every batch (decoded images, a stacked
array, a contiguous copy: 12.6 MB each for 256 RGB 128x128 images). glibc returns big freed blocks
to the kernel (``munmap``, or trimming the top of the heap), so the next batch faults every page
in again: 8-12 minor faults and ~40 us of kernel time an image, 15-20% of a JPEG decode, measured
in ``benchmarks/profile_image_cpu.py``. A single process decoding the same images in a loop faults
0.1 times an image, because glibc's dynamic thresholds happen to keep the memory there.

:func:`keep_freed_memory` fixes the thresholds (``mallopt``): blocks up to ``mmap_bytes`` come from
the heap, and the heap is trimmed only once ``trim_bytes`` lie free at its top. A worker then holds
about its peak batch working set, as it does at the peak anyway. glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Largest block served from the heap rather than its own mapping (glibc's ceiling on 64-bit: 32 MiB).
MMAP_BYTES = 32 * 2**20
#: Free memory at the heap's top before it is given back.
TRIM_BYTES = 512 * 2**20


def keep_freed_memory(mmap_bytes: int = MMAP_BYTES, trim_bytes: int = TRIM_BYTES) -> bool:
    """Set this process's glibc malloc to keep freed blocks (see the module doc); whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))
