"""10 000 mixed good and bad requests from 4 clients: every good one answered, no leak."""

from __future__ import annotations

import io
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from tests.faults.conftest import NUMPY_LINEAR, memory_kib, raw_exchange, worker_pids
from tests.server_helpers import wait_for
from tests.faults.test_memory_bombs import png_of_zeros

TOTAL, CLIENTS = 10_000, 4


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def mix(port: int):
    """(name, is_good, send) for each kind of request; send() returns the status code."""
    url = f"http://127.0.0.1:{port}/invocations"
    bomb = png_of_zeros(6000)
    row = npy(np.array([[1.0, 2.0, 3.0]]))

    def posting(session, body=None, json=None, **headers):
        return lambda: session.post(url, data=body, json=json, headers=headers,
                                    timeout=10).status_code

    def truncated():
        return raw_exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 50"
                                  b"\r\n\r\n[[1,2,3]]", half_close=True)[0]

    def header_too_large():
        return raw_exchange(port, b"GET /ping HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")[0]

    def session_kinds(session):
        return [
            ("json", True, posting(session, json=[[1, 2, 3]])),
            ("npy", True, posting(session, body=row, **{"Content-Type": "application/x-npy",
                                                          "Accept": "application/x-npy"})),
            ("csv in, fallback", True, posting(session, body=b"1,2,3\n4,5,6",
                                               **{"Content-Type": "text/csv",
                                                  "Accept": "image/png, application/json;q=0.1"})),
            ("bad json", False, posting(session, body=b"[[1,2,", **{"Content-Type":
                                                                       "application/json"})),
            ("wrong shape", False, posting(session, json=[[1, 2]])),
            ("bad type", False, posting(session, body=b"x", **{"Content-Type": "text/x-nope"})),
            ("bad accept", False, posting(session, json=[[1, 2, 3]], Accept="text/x-nope")),
            ("bomb", False, posting(session, body=bomb, **{"Content-Type": "image/png"})),
        ]

    return session_kinds, [("truncated", False, truncated),
                           ("header too large", False, header_too_large)]


def test_soak_of_mixed_good_and_bad_requests(serve):
    server = serve(NUMPY_LINEAR, "--workers", "2", "--threads", "4")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "two workers")
    session_kinds, raw_kinds = mix(server.port)

    def client(number: int, count: int, results: dict):
        session = requests.Session()
        kinds = session_kinds(session) + raw_kinds
        for kind in itertools.islice(itertools.cycle(kinds), number, number + count):
            name, good, send = kind
            try:
                status = send()
            except (requests.RequestException, OSError) as exc:
                status = type(exc).__name__
            results.setdefault((name, good), []).append(status)

    warm = {}
    client(0, 200, warm)
    workers = sorted(worker_pids(server))
    rss_before = {pid: memory_kib(pid) for pid in workers}
    results: dict = {}
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client, n, TOTAL // CLIENTS, results) for n in range(CLIENTS)]:
            future.result()
    rss_after = {pid: memory_kib(pid) for pid in workers}
    growth = {pid: (rss_after[pid] - rss_before[pid]) / 1024 for pid in workers}
    summary = {name: sorted(set(statuses), key=str) for (name, _), statuses in results.items()}
    print(f"\n{sum(map(len, results.values()))} requests; statuses {summary}; worker RSS growth "
          f"{ {pid: f'{mib:+.1f} MiB' for pid, mib in growth.items()} }")

    assert sum(map(len, results.values())) == TOTAL
    for (name, good), statuses in results.items():
        if good:
            assert set(statuses) == {200}, (name, [s for s in statuses if s != 200][:5])
        else:  # every bad one is a clear 4xx, never a 500 or a dropped connection
            assert all(isinstance(s, int) and 400 <= s < 500 for s in statuses), (name, statuses)
    assert sorted(worker_pids(server)) == workers
    assert all(mib < 100 for mib in growth.values()), growth
