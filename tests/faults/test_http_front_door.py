"""The worker's HTTP/1.1 front door against a real ``serve``: pipelining, hostile bytes,
answer framing. (The parser's own cases are in tests/serving/hosts/gunicorn/test_http1.py, the gunicorn
corpus in tests/integration/test_http_corpus.py.)"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import h11
import pytest
import requests

from tests.faults.conftest import NUMPY_LINEAR, worker_pids
from tests.http_corpus import exchange
from tests.server_helpers import wait_for
from tests.serving.hosts.gunicorn.test_http1 import REFUSED


@pytest.fixture
def server(serve):
    return serve(NUMPY_LINEAR, "--workers", "2", "--threads", "2")


BODY = b"[[1,2,3]]"
FIVE = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9\r\n\r\n" + BODY
        + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n4\r\n[[1,\r\n5\r\n2,3]]\r\n0\r\n\r\n"
        + b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def test_five_pipelined_requests_are_answered_in_order_at_once(server):
    started = time.monotonic()
    # Written in one go, and our side left open: nothing more arrives to wake the worker.
    answers, closed = exchange(server.port, FIVE, timeout=10, half_close=False)
    assert time.monotonic() - started < 5
    assert [a.status for a in answers] == [200, 200, 404, 200, 200] and closed
    assert answers[0].body == answers[3].body and json.loads(answers[0].body)
    assert answers[4].header("connection") == "close"
    ids = [a.header("x-request-id") for a in answers]
    assert len(set(ids)) == 5


def test_pipelined_requests_before_a_malformed_one_are_answered_first(server):
    good = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, closed = exchange(server.port, good + good + b"GET /ping HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 1, 2\r\n\r\n" + good, half_close=False)
    assert [a.status for a in answers] == [200, 200, 400] and closed
    assert b"Content-Length" in answers[2].body


def test_pipelined_requests_split_across_reads_are_answered(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for piece in (FIVE[:50], FIVE[50:51], FIVE[51:200], FIVE[200:]):
            sock.sendall(piece)
            time.sleep(0.05)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 4 and data.count(b"HTTP/1.1 404") == 1


def hostile_requests() -> list[bytes]:
    shapes = [data for data, _, _ in REFUSED.values()]
    rng = random.Random(20)
    good = FIVE[:200]
    for _ in range(40):  # mutated requests and plain noise
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        shapes.append(bytes(data))
        shapes.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    return shapes


def test_a_hostile_batch_kills_no_worker_and_loses_no_request_beside_it(server):
    wait_for(lambda: len(worker_pids(server)) == 2, 60, "both workers up")
    before = sorted(worker_pids(server))
    failures: list[object] = []
    done = threading.Event()

    def legitimate() -> None:
        with requests.Session() as session:
            while not done.is_set():
                response = session.post(server.url(), data=BODY, timeout=10,
                                        headers={"Content-Type": "application/json"})
                if response.status_code != 200:
                    failures.append(response.status_code)

    client = threading.Thread(target=legitimate)
    client.start()
    statuses = []
    try:
        for data in hostile_requests():
            answers, _ = exchange(server.port, data, timeout=10)
            statuses += [a.status for a in answers]
            for answer in answers:
                if answer.status >= 400:
                    assert json.loads(answer.body)["code"] == answer.status
    finally:
        done.set()
        client.join(30)
    assert not failures
    assert statuses and all(s < 500 or s in (501, 505) for s in statuses), statuses
    assert sorted(worker_pids(server)) == before
    assert "Exception in worker process" not in server.log
    assert "Traceback" not in server.log


def test_head_and_http10_answers_are_framed_for_the_connection_to_go_on(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        client = h11.Connection(h11.CLIENT)
        seen = {}
        for method in ("HEAD", "GET", "HEAD", "GET"):
            sock.sendall(client.send(h11.Request(method=method, target="/execution-parameters",
                                                 headers=[("Host", "x")])))
            sock.sendall(client.send(h11.EndOfMessage()))
            events = []
            while not events or not isinstance(events[-1], h11.EndOfMessage):
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(sock.recv(65536))
                else:
                    events.append(event)
            response = events[0]
            assert response.status_code == 200
            length = dict(response.headers)[b"content-length"]
            body = b"".join(e.data for e in events if isinstance(e, h11.Data))
            if method == "GET":
                assert json.loads(body) and int(length) == len(body)
            else:  # no body follows, but the length the GET would have
                assert body == b""
            assert seen.setdefault("length", length) == length
            client.start_next_cycle()  # h11 agrees the connection goes on
    # HTTP/1.0: a Content-Length, and the close unless keep-alive was asked for.
    answers, closed = exchange(server.port, b"GET /ping HTTP/1.0\r\n\r\n", half_close=False)
    assert answers[0].status == 200 and answers[0].header("content-length") is not None
    assert answers[0].header("connection") == "close" and closed


def test_control_characters_never_reach_the_log_raw(server):
    exchange(server.port, b"GET /a\x1b[31mred HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange(server.port, b"GET /ok%1b%0d%0aFAKE HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    log = server.log
    assert "\x1b" not in log
    assert "\nFAKE" not in log


def test_a_body_pipelined_behind_a_slow_answer_gets_its_own_time(serve, faulty_model):
    server = serve(faulty_model, "--workers", "1", "--threads", "2")
    slow = (b'POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
            b'Content-Length: 14\r\n\r\n{"sleep": 1.5}')
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 9\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(slow + head)  # the second head waits 1.5 s behind the first answer
        time.sleep(1.8)
        sock.sendall(BODY)  # its body only now: the rate floor counts from its turn
        data = b""
        while data.count(b"HTTP/1.1 ") < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
