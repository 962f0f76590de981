"""The worker's connection state machine, fed bytes and clock times by hand: what a
client's bytes and its slowness lead to, with no event loop."""

from __future__ import annotations

import socket

import pytest

from serving import errors
from serving.hosts.gunicorn.connection import (
    BODY,
    BUSY,
    CLOSE,
    CONTINUE,
    HEAD,
    IDLE,
    LINGER,
    Connection,
)
from serving.hosts.gunicorn.http1 import Request

HEADER_TIMEOUT = 10.0
RATE = 1024.0  # bytes a second


@pytest.fixture
def conn():
    ours, theirs = socket.socketpair()
    yield Connection(ours, ("127.0.0.1", 40000), 0.0, HEADER_TIMEOUT, "8080", 1 << 20)
    ours.close()
    theirs.close()


def post(body: bytes, *extra: str) -> bytes:
    fields = "".join(f"{f}\r\n" for f in extra)
    return (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{fields}\r\n").encode() + body


def test_a_whole_request_is_handed_over(conn):
    conn.on_data(post(b"[1]"), 0.1, HEADER_TIMEOUT)
    step = conn.next_step(0.1, HEADER_TIMEOUT)
    assert isinstance(step, Request) and step.body == b"[1]"
    assert conn.take(step) and conn.state == BUSY
    assert conn.expiry(1e6, HEADER_TIMEOUT, RATE) is None  # a busy connection has no deadline


def test_pipelined_requests_come_one_by_one_in_order(conn):
    conn.on_data(post(b"[1]") + post(b"[2]"), 0.1, HEADER_TIMEOUT)
    first = conn.next_step(0.1, HEADER_TIMEOUT)
    conn.take(first)
    second = conn.next_step(0.2, HEADER_TIMEOUT)
    assert (first.body, second.body) == (b"[1]", b"[2]")
    assert not conn.take(second)  # still busy: the same turn continues with it
    conn.answered()
    assert conn.served == 1 and conn.request is None


def test_a_slow_head_is_a_408_after_the_header_timeout(conn):
    conn.on_data(b"POST /invocations HTTP/1.1\r\nHo", 1.0, HEADER_TIMEOUT)
    assert conn.next_step(1.0, HEADER_TIMEOUT) is None and conn.state == HEAD
    assert conn.expiry(HEADER_TIMEOUT - 0.1, HEADER_TIMEOUT, RATE) is None
    error, phase = conn.expiry(HEADER_TIMEOUT + 0.1, HEADER_TIMEOUT, RATE)
    assert isinstance(error, errors.RequestTimeout) and phase == "headers"
    assert "SERVING_HEADER_TIMEOUT" in error.message


def test_a_body_slower_than_the_rate_is_a_408_after_its_grace_second(conn):
    conn.on_data(post(b"x" * 100_000)[:-99_000], 0.0, HEADER_TIMEOUT)
    assert conn.next_step(0.0, HEADER_TIMEOUT) is None and conn.state == BODY
    assert conn.expiry(0.9, HEADER_TIMEOUT, RATE) is None  # the first second is free
    conn.on_data(b"x" * 1000, 1.5, HEADER_TIMEOUT)  # 1000 bytes in 2 s: under the rate
    assert conn.expiry(1.9, HEADER_TIMEOUT, RATE) is None
    error, phase = conn.expiry(2.5, HEADER_TIMEOUT, RATE)
    assert isinstance(error, errors.RequestTimeout) and phase == "body"


def test_a_fast_enough_body_is_not_cut(conn):
    conn.on_data(post(b"x" * 10_000)[:-9_000], 0.0, HEADER_TIMEOUT)
    conn.next_step(0.0, HEADER_TIMEOUT)
    for second in range(1, 9):
        conn.on_data(b"x" * 1125, float(second), HEADER_TIMEOUT)
        assert conn.expiry(second + 0.5, HEADER_TIMEOUT, RATE) is None
    assert isinstance(conn.next_step(9.0, HEADER_TIMEOUT), Request)


def test_expect_100_continue_is_asked_for_once(conn):
    head = post(b"[1]", "Expect: 100-continue")[:-3]
    conn.on_data(head, 0.0, HEADER_TIMEOUT)
    assert conn.next_step(0.0, HEADER_TIMEOUT) == CONTINUE
    assert conn.next_step(0.1, HEADER_TIMEOUT) is None
    conn.on_data(b"[1]", 0.2, HEADER_TIMEOUT)
    assert isinstance(conn.next_step(0.2, HEADER_TIMEOUT), Request)


def test_a_malformed_request_is_its_error_then_a_linger(conn):
    conn.on_data(b"POST /invocations HTTP/1.1\r\nContent-Length: 3\r\n\r\n[1]", 0.0,
                 HEADER_TIMEOUT)  # no Host
    error = conn.next_step(0.0, HEADER_TIMEOUT)
    assert isinstance(error, errors.ServingError) and error.status_code == 400
    conn.linger(0.0)
    assert conn.state == LINGER and conn.reader.closed
    conn.on_data(post(b"[2]"), 0.1, HEADER_TIMEOUT)  # nothing more is parsed
    assert conn.next_step(0.1, HEADER_TIMEOUT) == CLOSE
    assert conn.expiry(0.5, HEADER_TIMEOUT, RATE) is None
    assert conn.expiry(1.5, HEADER_TIMEOUT, RATE) == CLOSE


def test_a_request_cut_off_by_the_client_closing_is_a_400(conn):
    conn.on_data(post(b"[1, 2]")[:-2], 0.0, HEADER_TIMEOUT)
    assert conn.next_step(0.0, HEADER_TIMEOUT) is None
    conn.on_data(b"", 0.1, HEADER_TIMEOUT)
    error = conn.next_step(0.1, HEADER_TIMEOUT)
    assert isinstance(error, errors.ServingError) and error.status_code == 400


def test_a_kept_alive_connection_closes_quietly_when_idle(conn):
    conn.on_data(post(b"[1]"), 0.0, HEADER_TIMEOUT)
    conn.take(conn.next_step(0.0, HEADER_TIMEOUT))
    conn.answered()
    conn.wait_for_next(1.0, 5.0)
    assert conn.state == IDLE and conn.between_requests
    assert conn.expiry(5.9, HEADER_TIMEOUT, RATE) is None
    assert conn.expiry(6.1, HEADER_TIMEOUT, RATE) == CLOSE
    # A next request's first bytes start its head timeout; it is no longer between requests.
    conn.on_data(b"POST /inv", 2.0, HEADER_TIMEOUT)
    conn.next_step(2.0, HEADER_TIMEOUT)
    assert conn.state == HEAD and not conn.between_requests
    error, phase = conn.expiry(2.0 + HEADER_TIMEOUT + 0.1, HEADER_TIMEOUT, RATE)
    assert phase == "headers"
