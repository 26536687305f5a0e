"""Keep a long-running gateway's memory flat and its pauses short: glibc's allocator, told to share its
arenas and to give freed memory back; Python's collector, kept off what start-up built.

Measured (the 60-minute soak, benchmarks/results/soak*.json): the gateway's resident memory rose
about 20 MB a minute with sessions opened and closed at the cap, while Python's own allocations
(tracemalloc) and the live session objects stayed flat. Each session's threads (executor jobs, the
face mesh, the codecs) allocate in glibc arenas of their own, up to 8 per core, and the frames
freed there are kept for reuse rather than returned: a session-shaped leak that is really
fragmentation. In a probe opening and closing 15 sessions in one process, `malloc_trim` returned
100 MB at the end, and with two arenas the growth per session fell from about 5.7 MB to 1.3 MB.
So the gateway caps the arenas at start and trims after each session closes.

That left about 1.4 MB a session of malloc's bytes in use (30 sessions of 20 s, no tracemalloc).
heaptrack put it in grpcio: cancelling a grpc.aio call from asyncio leaks native memory (2-3 KB a
call in isolation, more under load), and every frame past its budget was cancelled that way. Frames
now end at their call's gRPC deadline (client/backends/triton.py), and the growth stopped (+0.4 MB
over 6 sessions where it had been +8 to +12).

Not a leak, but worth knowing when reading a memory curve: a closed session is a web of reference
cycles (aiortc's peer connection, transports, tasks, the session's stages) holding its last frames and
packets until Python's next full collection (every 7 sessions or so here; one after a burst of 12
sessions freed 77 MB). Collecting after every close was tried and dropped: it held the GIL 56-116 ms
with two sessions live, a stall for every frame in flight, to return memory that is reused anyway.

On a C library other than glibc (musl, macOS) the allocator calls are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
GATEWAY_ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_arenas(arenas: int = GATEWAY_ARENAS) -> bool:
    """Cap the allocator's arenas (threads then share them); True if the C library took it."""
    if _LIBC is None:
        return False
    taken = bool(_LIBC.mallopt(M_ARENA_MAX, int(arenas)))
    logger.debug("malloc arenas capped at %d: %s", arenas, taken)
    return taken


def release_freed_memory() -> bool:
    """Hand memory the allocator keeps free back to the OS (a few ms); True if any was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


def freeze_startup_objects() -> int:
    """Put every object alive now (modules, the backend, MediaPipe's and aiortc's Python objects) out of
    the cyclic collector's reach; return how many. A full collection then walks only what sessions made.

    Measured in a one-session pipeline run (2-core Xeon): the gateway's full collections took 14-84 ms
    (the peers' process, 160-340 ms), each stopping every frame in flight; they made most of mouth p99.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 1024, 1)
