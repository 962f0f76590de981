"""How many connections each worker holds, shared by all of them: to spread connections evenly.

Workers share one listening socket, and the kernel hands a new connection to whichever
worker calls ``accept`` first. Left at that, one worker can take all of a client's
connections: wrk (or a load balancer's pool) opens them at once, and a worker with many
free threads takes them before the other wakes. Kept-alive connections stay where they
landed, so one core served 8 clients while the other idled (2 workers x 32 threads, the
threads batching gives: wrk's 8 connections split 8 / 0 or 7 / 1; with 4 threads, 4 / 4).

So each worker writes, once per turn of its loop, how many connections it holds into a
slot of memory the master maps before fork, and listens only while it holds no more than
the fewest any other worker ready to listen holds. A worker that cannot take a connection
now (loading, stopping, full, or no free thread) writes "not taking" and is left out, and
so is a slot not written for :data:`STALE_SECONDS` (its worker is hung or was killed): a
worker never waits on one that will not take the connection.
"""

from __future__ import annotations

import mmap
import struct

__all__ = ["NOT_TAKING", "STALE_SECONDS", "WorkerLoads"]

#: Written by a worker that cannot take a connection now.
NOT_TAKING = -1
#: A slot older than this is a worker that stopped turning its loop: left out. The loop
#: turns at least every TICK_SECONDS (0.25 s) when nothing happens.
STALE_SECONDS = 1.0
#: connections (or NOT_TAKING), when written (time.monotonic(): one clock for all
#: processes of the machine)
_SLOT = struct.Struct("qd")


class WorkerLoads:
    """One slot per worker index, in anonymous shared memory (made before fork)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._memory = mmap.mmap(-1, max(1, workers) * _SLOT.size)
        for index in range(workers):
            self.clear(index)

    def publish(self, index: int, connections: int, now: float) -> None:
        """Worker ``index`` holds ``connections`` (or cannot take one: NOT_TAKING)."""
        if 0 <= index < self.workers:  # a worker past the count (TTIN) is not balanced
            _SLOT.pack_into(self._memory, index * _SLOT.size, connections, now)

    def clear(self, index: int) -> None:
        """Worker ``index`` is gone (the master, as it reaps it)."""
        if 0 <= index < self.workers:
            _SLOT.pack_into(self._memory, index * _SLOT.size, NOT_TAKING, 0.0)

    def fewest_elsewhere(self, index: int, now: float) -> int | None:
        """The fewest connections held by another worker that is taking connections, or
        ``None`` when there is none."""
        fewest = None
        for other in range(self.workers):
            if other == index:
                continue
            connections, written = _SLOT.unpack_from(self._memory, other * _SLOT.size)
            if connections != NOT_TAKING and now - written < STALE_SECONDS \
                    and (fewest is None or connections < fewest):
                fewest = connections
        return fewest
