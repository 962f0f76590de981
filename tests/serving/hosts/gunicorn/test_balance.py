"""The workers' shared connection counts: what a worker reads of the others'."""

from __future__ import annotations

import os

from serving.hosts.gunicorn.balance import NOT_TAKING, STALE_SECONDS, WorkerLoads


def test_a_worker_sees_the_fewest_connections_another_worker_taking_them_holds():
    loads = WorkerLoads(3)
    assert loads.fewest_elsewhere(0, now=10.0) is None  # nobody has written yet
    loads.publish(1, 5, now=10.0)
    loads.publish(2, 3, now=10.0)
    loads.publish(0, 0, now=10.0)
    assert loads.fewest_elsewhere(0, now=10.0) == 3
    assert loads.fewest_elsewhere(2, now=10.0) == 0  # its own count is not "elsewhere"


def test_workers_that_cannot_take_one_or_went_silent_are_left_out():
    loads = WorkerLoads(3)
    loads.publish(1, 1, now=10.0)
    loads.publish(2, NOT_TAKING, now=10.0)  # loading, stopping, or every thread busy
    assert loads.fewest_elsewhere(0, now=10.0) == 1
    # Worker 1 stopped turning its loop (hung, or killed): waiting on it would starve.
    assert loads.fewest_elsewhere(0, now=10.0 + STALE_SECONDS) is None
    loads.publish(2, 4, now=11.0)
    loads.clear(2)  # the master reaped it
    assert loads.fewest_elsewhere(0, now=11.0) is None


def test_a_worker_past_the_count_is_not_balanced_and_breaks_nothing():
    loads = WorkerLoads(2)  # gunicorn's TTIN added a third
    loads.publish(2, 0, now=10.0)
    loads.publish(1, 7, now=10.0)
    assert loads.fewest_elsewhere(2, now=10.0) == 7
    assert loads.fewest_elsewhere(0, now=10.0) == 7


def test_the_counts_are_shared_with_forked_workers():
    loads = WorkerLoads(2)
    child = os.fork()
    if child == 0:  # the "worker": writes its count, as its loop does
        loads.publish(1, 6, now=20.0)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert loads.fewest_elsewhere(0, now=20.0) == 6
