"""The gunicorn worker's accept policy: when it listens, and how many connections it takes.

Workers share one listening socket; the kernel hands a new connection to whichever
worker calls ``accept`` first. So a worker listens only while it can serve soon: its
model is ready, it holds fewer than ``SERVING_MAX_CONNECTIONS``, and it has an HTTP thread
for the connection (counting connections accepted just now that have sent nothing yet:
clients such as wrk open all of theirs at once, and one worker must not take them all),
and it holds no more connections than the fewest another worker ready to take one holds
(:mod:`serving.hosts.gunicorn.balance`: the workers' counts, shared). A saturated worker that is still finishing requests takes one waiting connection now and
then, so that nothing starves in the listen backlog while every worker is busy.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from serving.hosts.gunicorn.connection import Connection

__all__ = ["AcceptPolicy"]

#: How often a worker whose threads are all busy still takes one waiting connection, so
#: that nothing starves in the listen backlog while every worker is saturated. A worker
#: with a free thread waits on the listener and takes new connections first. Only while
#: the worker is finishing requests, two or more in the last SATURATED_PROGRESS_SECONDS:
#: one whose threads are stuck takes nothing more. (With one, a worker whose last free
#: thread had just answered a request and then taken a request that hangs took the next
#: connection too, which waited there for its 504 instead of for a fresh worker.)
#: The loop tries when it wakes anyway (a request finishing wakes it), at most this often.
#: (BENCHMARKS.md has the figures that chose 5 ms: the "saturated accept interval" table.)
SATURATED_ACCEPT_SECONDS = 0.005
SATURATED_PROGRESS_SECONDS = 0.1
#: A connection accepted this recently that has sent nothing yet counts as wanting a
#: thread. Short, so that idle connections cannot keep a worker from listening.
UNSTARTED_SECONDS = 0.05


class AcceptPolicy:
    """One worker's accept decisions, from what it holds; no sockets."""

    def __init__(self, threads: int, max_connections: int) -> None:
        self.threads = threads
        self.max_connections = max_connections
        self.recent: list[Connection] = []  # accepted within UNSTARTED_SECONDS
        self.last_finished = self.previous_finished = 0.0  # the two latest answers' times
        self._next_saturated_accept = 0.0

    def accepted(self, conn: Connection) -> None:
        self.recent.append(conn)

    def finished(self, now: float) -> None:
        """An answer was written (or given up)."""
        self.previous_finished, self.last_finished = self.last_finished, now

    def unstarted(self, now: float) -> int:
        """Connections accepted in the last UNSTARTED_SECONDS that have sent nothing yet."""
        return sum(1 for conn in self.recent
                   if now - conn.accepted < UNSTARTED_SECONDS and not conn.got)

    def can_take(self, stopping: bool, ready: bool, connections: int) -> bool:
        """Whether the worker may take another connection at all."""
        return not stopping and ready and connections < self.max_connections

    def has_room(self, can_take: bool, busy: int, now: float) -> bool:
        """Whether a thread is free for one more connection."""
        return can_take and busy + self.unstarted(now) < self.threads

    @staticmethod
    def fair(connections: int, fewest_elsewhere: int | None) -> bool:
        """Whether taking one more keeps the connections even: this worker holds no more
        than the fewest another worker with room holds (``None``: there is none)."""
        return fewest_elsewhere is None or connections <= fewest_elsewhere

    def saturated_accept_due(self, now: float) -> bool:
        """Saturated (may take, but not listening): whether to take one waiting connection
        now. Only while requests are being finished, at most every SATURATED_ACCEPT_SECONDS."""
        if now >= self._next_saturated_accept \
                and now - self.previous_finished < SATURATED_PROGRESS_SECONDS:
            self._next_saturated_accept = now + SATURATED_ACCEPT_SECONDS
            return True
        return False

    def how_many(self, busy: int, now: float, connections: int = 0,
                 fewest_elsewhere: int | None = None) -> int:
        """How many connections to accept on one readable listener: a few at a time, since
        connections a worker cannot serve soon are better left to the others, and no more
        than keeps the workers even."""
        self.recent = [c for c in self.recent if now - c.accepted < UNSTARTED_SECONDS]
        count = self.threads - busy - self.unstarted(now)
        if fewest_elsewhere is not None:
            count = min(count, fewest_elsewhere + 1 - connections)
        return max(1, count)
