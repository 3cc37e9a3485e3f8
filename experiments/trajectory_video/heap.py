"""Keep freed memory mapped in a generating process, so batches reuse it.

Rendering a batch of samples allocates about 10 MB of short-lived numpy temporaries
(blob geometry, index arrays, textures). glibc's malloc hands large freed blocks back to
the kernel (unmapping them, or trimming the heap top), so the next batch page-faults the
same amount of fresh, zeroed memory in again (about 20 pages per 32x32 sample, some
5-10% of the generation time). Asking malloc to keep some padding at the heap top keeps
that memory for reuse. Without glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TOP_PAD = -2  # glibc <malloc.h>
TOP_PAD_BYTES = 64 << 20


@functools.cache
def retain_freed_memory() -> bool:
    """Ask glibc to keep up to ``TOP_PAD_BYTES`` of freed heap mapped; once per process.
    True when it took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no symbol table to look it up in)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TOP_PAD, TOP_PAD_BYTES))
