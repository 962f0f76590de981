"""The worker's accept policy: when it listens and how many connections it takes."""

from __future__ import annotations

import types

from serving.hosts.gunicorn.accept import (
    SATURATED_ACCEPT_SECONDS,
    SATURATED_PROGRESS_SECONDS,
    UNSTARTED_SECONDS,
    AcceptPolicy,
)


def connection(accepted: float, got: int = 0):
    return types.SimpleNamespace(accepted=accepted, got=got)


def test_it_listens_only_with_a_free_thread():
    policy = AcceptPolicy(threads=4, max_connections=100)
    assert policy.has_room(True, busy=3, now=0.0)
    assert not policy.has_room(True, busy=4, now=0.0)
    assert not policy.has_room(False, busy=0, now=0.0)


def test_connections_that_have_sent_nothing_yet_count_as_wanting_a_thread():
    # wrk opens all its connections at once: one worker must not take them all.
    policy = AcceptPolicy(threads=4, max_connections=100)
    for _ in range(3):
        policy.accepted(connection(accepted=1.0))
    assert policy.unstarted(1.01) == 3
    assert not policy.has_room(True, busy=1, now=1.01)
    assert policy.how_many(busy=0, now=1.01) == 1
    # Once they send, or once they have waited UNSTARTED_SECONDS, they no longer count.
    policy.recent[0].got = 10
    assert policy.unstarted(1.01) == 2
    assert policy.unstarted(1.0 + UNSTARTED_SECONDS + 0.001) == 0
    assert policy.how_many(busy=1, now=1.0 + UNSTARTED_SECONDS + 0.001) == 3
    assert policy.recent == []


def test_it_takes_no_more_than_keeps_the_workers_even():
    policy = AcceptPolicy(threads=32, max_connections=100)
    assert AcceptPolicy.fair(connections=4, fewest_elsewhere=None)  # no other worker taking
    assert AcceptPolicy.fair(connections=4, fewest_elsewhere=4)
    assert not AcceptPolicy.fair(connections=5, fewest_elsewhere=4)
    # 32 free threads, but the other worker holds 2: one now, to 3, then the other's turn.
    assert policy.how_many(busy=0, now=1.0, connections=2, fewest_elsewhere=2) == 1
    assert policy.how_many(busy=0, now=1.0, connections=0, fewest_elsewhere=3) == 4
    assert policy.how_many(busy=0, now=1.0, connections=0) == 32


def test_it_takes_nothing_when_stopping_full_or_not_ready():
    policy = AcceptPolicy(threads=4, max_connections=2)
    assert policy.can_take(stopping=False, ready=True, connections=1)
    assert not policy.can_take(stopping=False, ready=True, connections=2)
    assert not policy.can_take(stopping=True, ready=True, connections=0)
    assert not policy.can_take(stopping=False, ready=False, connections=0)


def test_a_saturated_worker_takes_one_now_and_then_only_while_finishing_requests():
    policy = AcceptPolicy(threads=1, max_connections=100)
    assert not policy.saturated_accept_due(10.0)  # nothing finished: stuck, takes nothing
    policy.finished(9.95)
    assert not policy.saturated_accept_due(10.0)  # one answer is not progress
    policy.finished(9.99)
    assert policy.saturated_accept_due(10.0)
    assert not policy.saturated_accept_due(10.0 + SATURATED_ACCEPT_SECONDS / 2)
    assert policy.saturated_accept_due(10.0 + SATURATED_ACCEPT_SECONDS)
    assert not policy.saturated_accept_due(9.95 + SATURATED_PROGRESS_SECONDS + 0.01)
