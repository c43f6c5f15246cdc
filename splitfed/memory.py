"""This process's memory, as the kernel counts it (resident now and at its peak, from Linux /proc), and
handing freed memory back to it. No splitfed imports: every layer may use it."""

from __future__ import annotations

import contextlib
import ctypes
import os


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """The peak resident set size of this process since it started (``VmHWM``; None off Linux). Unlike
    ``getrusage``'s ``ru_maxrss``, it does not inherit the parent's peak through fork and exec."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def resident_bytes() -> int:
    """Resident memory of this process now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's ``malloc_trim``; elsewhere a no-op).
    glibc keeps freed memory in its heaps: freed buffers of a few MiB from several threads (a part's
    loading; generation caches) stay resident unless asked."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
