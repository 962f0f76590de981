"""The per-worker executor: a call runs on a prediction thread under its deadline; past
it the caller gets its 504 at once, and a call that is still running asks the worker to
retire. No server: the executor alone, with real threads."""

from __future__ import annotations

import os
import threading
import time

import pytest

from serving.errors import DeadlineExceeded, ServiceUnavailable
from serving.runtime import logs
from serving.runtime.executor import Runtime


def test_a_call_runs_on_a_prediction_thread_with_the_callers_request_id():
    runtime = Runtime(threads=2, deadline_seconds=5)
    token = logs.request_id.set("req-7")
    try:
        name, request_id = runtime.call(lambda: (threading.current_thread().name,
                                                 logs.request_id.get()))
    finally:
        logs.request_id.reset(token)
    assert name.startswith("predict-") and request_id == "req-7"
    with pytest.raises(ZeroDivisionError):  # the call's own error reaches the caller
        runtime.call(lambda: 1 / 0)
    assert runtime.retire_reason is None


def test_a_call_past_its_deadline_is_a_504_and_the_worker_retires():
    runtime = Runtime(threads=1, deadline_seconds=0.2)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        runtime.call(release.wait, 10)
    assert time.monotonic() - started < 2
    assert "still running" in runtime.retire_reason
    # A fresh thread took the stuck one's place: what comes next is still answered.
    assert runtime.call(lambda: 42) == 42
    release.set()


def test_the_deadline_counts_from_arrival():
    runtime = Runtime(threads=1, deadline_seconds=0.5)
    with pytest.raises(DeadlineExceeded):  # arrived long ago: no time left at all
        runtime.call(lambda: 1, started=time.monotonic() - 1)


def test_a_queued_call_given_up_on_never_runs():
    runtime = Runtime(threads=1, deadline_seconds=0.3)
    ran, release = [], threading.Event()
    blocker = threading.Thread(target=lambda: pytest.raises(DeadlineExceeded, runtime.call,
                                                            release.wait, 10))
    blocker.start()
    time.sleep(0.05)
    # Queued behind the stuck one, its deadline comes first (it arrived earlier): given up
    # before any thread was free for it.
    with pytest.raises(DeadlineExceeded):
        runtime.call(ran.append, "queued", started=time.monotonic() - 0.2)
    blocker.join()
    release.set()
    time.sleep(0.1)
    assert ran == []


def test_close_answers_the_waiting_calls_503_and_counts_them():
    runtime = Runtime(threads=1, deadline_seconds=10)
    release = threading.Event()
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            runtime.call(release.wait, 10)
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=waiting) for _ in range(3)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 5
    while runtime.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runtime.close() == 3
    for caller in callers:
        caller.join(5)
    assert len(errors) == 3 and all(isinstance(e, ServiceUnavailable) for e in errors)
    with pytest.raises(ServiceUnavailable):  # and no new call is taken
        runtime.call(lambda: 1)
    release.set()


def test_threads_start_in_each_forked_worker_not_in_the_master():
    runtime = Runtime(threads=2, deadline_seconds=5)  # made in the "master"
    before = threading.active_count()
    assert runtime.in_flight == 0 and threading.active_count() == before
    pid = os.fork()
    if pid == 0:
        ok = runtime.call(os.getpid) == os.getpid()
        os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert threading.active_count() == before  # the child's threads are its own
