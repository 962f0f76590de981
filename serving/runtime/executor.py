"""What runs inside a worker after fork: the executor that runs requests under a deadline.

HTTP threads never run user code themselves. They hand the request to the
worker's :class:`Runtime` and wait for it, at most until the request's deadline.
Past it the HTTP thread answers 504 at once. A request still queued is dropped.
A prediction still running cannot be interrupted, because Python threads cannot
be killed, so the runtime asks for the worker to retire: the worker stops
accepting, answers what else it holds, and exits; the master forks a fresh one
from the preloaded model.

Dynamic batching runs in the model's pipeline (:mod:`serving.runtime.batching`): its
batcher joins the calls that arrive within a window into one predict, behind the
same :meth:`Runtime.call`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
import typing as t

from serving.errors import DeadlineExceeded, ServiceUnavailable, ServingError

__all__ = ["Inline", "Runtime"]

log = logging.getLogger(__name__)

_QUEUED, _RUNNING, _DONE, _GIVEN_UP = range(4)
_thread = threading.local()  # .spare: a spare HTTP thread (Runtime.spare_thread)


class _Job:
    __slots__ = ("fn", "args", "state", "result", "error", "done", "lock", "deadline", "context")

    def __init__(self, fn: t.Callable[..., t.Any], args: tuple[t.Any, ...],
                 deadline: float) -> None:
        self.fn, self.args, self.deadline = fn, args, deadline
        # The caller's context variables (its request id among them) go with the job.
        self.context = contextvars.copy_context()
        self.state = _QUEUED
        self.result: t.Any = None
        self.error: BaseException | None = None
        # Released once, when the job has its answer: a bare lock is cheaper to wait on
        # than an Event (which makes a Condition and a waiter lock each wait).
        self.done = threading.Lock()
        self.done.acquire()
        self.lock = threading.Lock()

    def finish(self, state: int, result: t.Any, error: BaseException | None) -> None:
        """Give the job its answer; the caller holds ``self.lock``, state not yet final."""
        self.state, self.result, self.error = state, result, error
        self.done.release()


class Runtime:
    """A worker's prediction threads, and the deadline every call runs under.

    Threads start on the first call in each process, so a runtime made in the
    gunicorn master (preload) starts nothing there; each forked worker starts
    its own.
    """

    def __init__(self, threads: int, deadline_seconds: float, core: int | None = None) -> None:
        self.threads = threads
        #: Threads for the calls of ordinary HTTP threads; the rest (spare, with batching:
        #: threads - core) take only the calls of spare HTTP threads (:meth:`spare_thread`).
        #: Two pools, so that with the spare ones unused the core ones stay warm: a call
        #: then queues for a busy warm thread instead of waking a cold one.
        self.core = threads if core is None else min(core, threads)
        self.deadline_seconds = deadline_seconds
        #: Why this worker should be replaced (a prediction that will not return), or None.
        self.retire_reason: str | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
            self._spare_queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
            self._pending: set[_Job] = set()
            self._closed: ServingError | None = None
            self.retire_reason = None
            self._started = 0
            for index in range(self.threads):
                self._add_thread(self._queue if index < self.core else self._spare_queue)
            self._pid = os.getpid()

    def _add_thread(self, jobs: queue.SimpleQueue[_Job]) -> None:
        # Daemon threads: one stuck in user code must not keep the process alive.
        threading.Thread(target=self._serve, args=(jobs,), name=f"predict-{self._started}",
                         daemon=True).start()
        self._started += 1

    @staticmethod
    def spare_thread() -> None:
        """The calling thread is a spare HTTP thread: its calls go to the spare pool."""
        _thread.spare = True

    def _serve(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            job = jobs.get()
            with job.lock:
                if job.state != _QUEUED:  # its caller gave up while it waited
                    continue
                job.state = _RUNNING
            try:
                result, error = job.context.run(job.fn, *job.args), None
            except BaseException as exc:  # handed to the caller, who raises it
                result, error = None, exc
            with job.lock:
                # A job given up on (deadline, shutdown) already has its answer: keep it.
                late = job.state == _GIVEN_UP
                if not late:
                    job.finish(_DONE, result, error)
            if late:  # logged in the job's context: the line carries its request id
                job.context.run(log.warning, "a request came back %.1f s past its deadline",
                                time.monotonic() - job.deadline)

    def call(self, fn: t.Callable[..., t.Any], *args: t.Any, started: float | None = None) -> t.Any:
        """``fn(*args)`` on a prediction thread, within the deadline.

        :param started: when the request arrived (``time.monotonic()``); the
            deadline counts from there. Default: now.
        :raises DeadlineExceeded: past the deadline (504).
        :raises ServiceUnavailable: the worker is stopping (503).
        """
        if self._pid != os.getpid():
            self._start()
        deadline = (time.monotonic() if started is None else started) + self.deadline_seconds
        job = _Job(fn, args, deadline)
        with self._lock:
            if self._closed is not None:
                raise self._closed
            self._pending.add(job)
        jobs = self._spare_queue if getattr(_thread, "spare", False) else self._queue
        try:
            jobs.put(job)
            if not job.done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                with job.lock:
                    if job.state != _DONE:  # else it came back at the last moment
                        if job.state == _RUNNING:  # a thread is stuck in it: retire
                            self.retire_reason = (
                                f"a request ran past its deadline of "
                                f"{self.deadline_seconds:g} s and is still running"
                            )
                            # A fresh thread takes its place, so that what waits behind
                            # it is answered while the worker retires.
                            with self._lock:
                                self._add_thread(jobs)
                        job.state = _GIVEN_UP  # a queued one is skipped, never started
                        raise DeadlineExceeded(self.deadline_seconds)
            if job.error is not None:
                raise job.error
            return job.result
        finally:
            with self._lock:
                self._pending.discard(job)

    @property
    def in_flight(self) -> int:
        """Calls waiting for an answer now."""
        if self._pid != os.getpid():
            return 0
        with self._lock:
            return len(self._pending)

    def close(self, error: ServingError | None = None) -> int:
        """Refuse new calls; answer every waiting one with ``error`` (503 by default).

        Returns how many waiting calls were answered so: requests the worker
        had to drop at shutdown.
        """
        error = error or ServiceUnavailable("the server is stopping")
        if self._pid != os.getpid():
            return 0
        dropped = 0
        with self._lock:
            self._closed = error
            pending = list(self._pending)
        for job in pending:
            with job.lock:
                if job.state in (_DONE, _GIVEN_UP):  # answered, or its caller gave up
                    continue
                job.finish(_GIVEN_UP, None, error)
            dropped += 1
        return dropped


class Inline:
    """Runs the model's code in the calling thread, as :meth:`Runtime.call` would run it on
    a prediction thread: for batch transform, where no client waits for an answer and a
    file's records run one after another. The deadline is given to the model's pipeline
    (a batch leaves a request out past it) but not enforced by abandoning the call."""

    def __init__(self, deadline_seconds: float) -> None:
        self.deadline_seconds = deadline_seconds

    def call(self, fn: t.Callable[..., t.Any], *args: t.Any,
             started: float | None = None) -> t.Any:
        return fn(*args)
