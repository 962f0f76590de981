"""Dynamic batching through a real ``serve``: joined, split back, isolated, under deadlines.

The model's ``predict_fn`` is marked ``@serving.batched`` and records every call's row
count in a file, so the tests see the batches the server made, not just the answers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.server_helpers import Server, batch_sizes, write_model_dir

# Each row is [request id, value]; the answer row is [request id, 2 * value]. A value of
# -1 makes predict raise (the bad request); a value of 99 makes it sleep 3 s (stuck).
RECORDING_INFERENCE = """
    import os
    import time

    import numpy as np

    import serving


    def model_fn(model_dir):
        return os.path.join(model_dir, "calls.log")


    @serving.batched
    def predict_fn(data, calls_log):
        with open(calls_log, "a") as f:
            f.write(" ".join(str(int(i)) for i in data[:, 0]) + "\\n")
        if (data[:, 1] == -1).any():
            raise ValueError("a negative value")
        if (data[:, 1] == 99).any():
            time.sleep(3)
        return np.stack([data[:, 0], data[:, 1] * 2], axis=1)
"""


def calls(model_dir) -> list[list[int]]:
    """Each predict call's request ids, in call order."""
    path = model_dir / "calls.log"
    if not path.exists():
        return []
    return [[int(i) for i in line.split()] for line in path.read_text().splitlines()]


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path, RECORDING_INFERENCE)


def start(model_dir, *args: str) -> Server:
    # One worker, so that every concurrent request meets the same batcher.
    server = Server(model_dir, "--workers", "1", *args,
                    log_path=model_dir.parent / "serve.log")
    server.wait_ready()
    return server


def post_rows(url: str, rows: list[list[float]], timeout: float = 10) -> requests.Response:
    return requests.post(url, json=rows, timeout=timeout)


def concurrently(url: str, bodies: list[list[list[float]]]) -> list[requests.Response]:
    """All the requests at once, each on its own connection, released together."""
    barrier = threading.Barrier(len(bodies))

    def send(rows):
        barrier.wait()
        return post_rows(url, rows)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_concurrent_requests_are_joined_and_each_gets_its_own_rows(model_dir):
    server = start(model_dir, "--max-batch-size", "32", "--max-batch-delay-ms", "200")
    try:
        # Requests of 1, 2 and 3 rows: the split must follow each request's row count.
        bodies = [[[i, 10 * i + k] for k in range(1 + i % 3)] for i in range(12)]
        for _ in range(3):  # a batch needs the requests in the worker together: give it tries
            (model_dir / "calls.log").unlink(missing_ok=True)
            answers = concurrently(server.url(), bodies)
            if max(map(len, calls(model_dir))) > 1:
                break
        for rows, answer in zip(bodies, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json() == [[i, 2 * v] for i, v in rows]
        made = calls(model_dir)
        assert max(len(call) for call in made) > 1, f"no batch joined two requests: {made}"
        assert sorted(i for call in made for i in call) == sorted(
            i for rows in bodies for i, _ in rows)  # every row predicted exactly once
    finally:
        server.terminate()


def test_more_clients_than_threads_with_small_batches_are_all_answered(model_dir):
    # Batches of 2 on 4 threads: no thread beyond the core ones. A request that came while
    # all 4 were busy and a batch gathered once waited for a spare thread that did not
    # exist, and was never answered (found serving a TorchServe snapshot's batchSize 2).
    server = start(model_dir, "--threads", "4", "--max-batch-size", "2",
                   "--max-batch-delay-ms", "40")
    try:
        for round_ in range(3):
            bodies = [[[100 * round_ + i, i]] for i in range(12)]
            answers = concurrently(server.url(), bodies)
            assert [a.status_code for a in answers] == [200] * 12
            assert [a.json() for a in answers] == [[[100 * round_ + i, 2 * i]]
                                                   for i in range(12)]
    finally:
        server.terminate()


def test_a_bad_request_in_a_batch_fails_only_itself(model_dir):
    server = start(model_dir, "--max-batch-size", "32", "--max-batch-delay-ms", "200")
    try:
        bodies = [[[i, -1 if i == 5 else i]] for i in range(10)]
        for _ in range(3):
            (model_dir / "calls.log").unlink(missing_ok=True)
            answers = concurrently(server.url(), bodies)
            if any(5 in call and len(call) > 1 for call in calls(model_dir)):
                break  # the bad request was in a joined batch: the case under test
        assert any(5 in call and len(call) > 1 for call in calls(model_dir)), calls(model_dir)
        for rows, answer in zip(bodies, answers):
            if rows[0][0] == 5:
                assert answer.status_code == 500
                assert answer.json()["exception"] == "ValueError"
            else:
                assert answer.status_code == 200, answer.text
                assert answer.json() == [[rows[0][0], 2 * rows[0][1]]]
    finally:
        server.terminate()


def test_inputs_that_cannot_be_joined_run_in_separate_batches(model_dir):
    server = start(model_dir, "--max-batch-size", "32", "--max-batch-delay-ms", "200")
    try:
        # Rows of 2 numbers and rows of 3 numbers never share a call; a 1-D input is one
        # sample and runs alone; none is refused.
        bodies = [[[i, i]] if i % 2 else [[i, i, 0]] for i in range(8)]
        answers = concurrently(server.url(), bodies)
        for rows, answer in zip(bodies, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json() == [[rows[0][0], 2 * rows[0][1]]]
        for call in calls(model_dir):
            assert len({i % 2 for i in call}) == 1, f"shapes mixed in one call: {call}"
        # A 1-D input reaches predict_fn as it came, alone (which indexes data[:, 0] and so
        # fails on it): not reshaped into rows, not refused by the batcher.
        one_d = requests.post(server.url(), json=[100, 7], timeout=10)
        assert one_d.status_code == 500 and one_d.json()["exception"] == "IndexError"
    finally:
        server.terminate()


def test_the_deadline_applies_per_request_in_a_batch(model_dir):
    server = start(model_dir, "--max-batch-size", "4", "--max-batch-delay-ms", "50",
                   "--request-timeout", "1")
    try:
        with ThreadPoolExecutor(4) as pool:
            stuck = pool.submit(post_rows, server.url(), [[1, 99]])  # predict sleeps 3 s
            time.sleep(0.3)  # the stuck call is running; these wait behind it
            started = time.monotonic()
            behind = [pool.submit(post_rows, server.url(), [[i, i]]) for i in (2, 3)]
            answers = [f.result() for f in behind]
            waited = time.monotonic() - started
            assert stuck.result().status_code == 504
        # Stuck behind a predict past their deadline: 504 at the deadline, not after it.
        # (That the batcher then leaves them out is checked in tests/serving/runtime/test_batching.py:
        # here the worker retires first, its prediction being stuck.)
        assert [a.status_code for a in answers] == [504, 504]
        assert waited < 2.5, f"answered after {waited:.1f} s: the deadline is 1 s"
    finally:
        server.terminate()


def test_a_batch_waits_at_most_the_max_delay_and_a_lone_client_not_at_all(model_dir):
    server = start(model_dir, "--max-batch-size", "8", "--max-batch-delay-ms", "1000")
    try:
        with requests.Session() as session:
            session.post(server.url(), json=[[0, 0]], timeout=10)  # warm
            started = time.monotonic()
            assert session.post(server.url(), json=[[1, 1]], timeout=10).status_code == 200
            alone = time.monotonic() - started
            # A second client connected but sending nothing: the batch waits for it, up to
            # the delay, then runs without it.
            with socket.create_connection(("127.0.0.1", server.port)):
                time.sleep(0.2)
                started = time.monotonic()
                answer = session.post(server.url(), json=[[2, 2]], timeout=10)
                waited = time.monotonic() - started
        assert answer.status_code == 200 and answer.json() == [[2, 4]]
        assert alone < 0.8, f"a lone client waited {alone:.2f} s for a batch"
        assert 0.9 <= waited < 3, f"waited {waited:.2f} s with a 1 s max delay"
    finally:
        server.terminate()


def test_an_unmarked_predict_fn_is_never_given_a_batch(tmp_path):
    model_dir = write_model_dir(tmp_path, RECORDING_INFERENCE.replace("@serving.batched", ""))
    server = start(model_dir, "--max-batch-size", "32", "--max-batch-delay-ms", "200")
    try:
        answers = concurrently(server.url(), [[[i, i]] for i in range(8)])
        assert [a.status_code for a in answers] == [200] * 8
        assert all(len(call) == 1 for call in calls(model_dir)), calls(model_dir)
        assert "not marked @serving.batched" in server.log
    finally:
        server.terminate()


@pytest.mark.pytorch
def test_pytorch_default_predict_batched_equals_unbatched(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.script(net.eval()).save(str(model_dir / "model.pt"))
    rng = np.random.default_rng(0)
    bodies = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32).tolist() for i in range(16)]
    server = Server(model_dir, "--workers", "1", "--max-batch-size", "16",
                    "--max-batch-delay-ms", "100", "--log-level", "DEBUG",
                    log_path=tmp_path / "serve.log")
    server.wait_ready()
    try:
        answers = concurrently(server.url(), bodies)
    finally:
        server.terminate()
    sizes = batch_sizes(server.log)
    assert max(sizes) > 1, f"no joined batch: {sizes}"
    with torch.no_grad():
        for rows, answer in zip(bodies, answers):
            assert answer.status_code == 200, answer.text
            expected = net(torch.tensor(rows)).numpy()
            np.testing.assert_allclose(np.array(answer.json()), expected, rtol=1e-5, atol=1e-6)


def test_batching_settings_are_checked(model_dir):
    from tests.server_helpers import run_serve

    result = run_serve("--model-dir", str(model_dir), "--max-batch-size", "0")
    assert result.returncode == 2 and "--max-batch-size" in result.stderr
    result = run_serve("--model-dir", str(model_dir), "--max-batch-size", "513")
    assert result.returncode == 2 and "--max-batch-size" in result.stderr
    result = run_serve("--model-dir", str(model_dir), "--max-batch-delay-ms", "-1")
    assert result.returncode == 2 and "--max-batch-delay-ms" in result.stderr


def test_json_rows_keep_their_values(model_dir):
    # The answer is JSON of the joined-then-split arrays: no row of another request.
    server = start(model_dir, "--max-batch-size", "8", "--max-batch-delay-ms", "100")
    try:
        answers = concurrently(server.url(), [[[i, 0.5 + i]] for i in range(8)])
        assert [json.loads(a.text) for a in answers] == [[[i, 1.0 + 2 * i]] for i in range(8)]
    finally:
        server.terminate()


# A model of known cost per call: a fixed part, which joined requests share, and a part
# per row, which they do not. The sleep holds no lock, as a model that frees the GIL.
COSTED_INFERENCE = """
    import time

    import serving


    def model_fn(model_dir):
        return None


    @serving.batched
    def predict_fn(data, model):
        time.sleep({fixed} + {per_row} * len(data))
        return data * 2
"""


@pytest.mark.parametrize("fixed, per_row, decision", [
    # Nothing to share: batched, calls only wait for each other (at most 50 req/s, one by
    # one 200: far below what the clients send, so the clients' own speed cannot hide it).
    (0.0, 0.02, "alone"),
    (0.02, 0.0002, "batch"),  # most of a call is fixed: one call for 16 rows beats 16
])
def test_the_worker_measures_whether_batching_pays_and_says_what_it_chose(
        tmp_path, fixed, per_row, decision):
    model_dir = write_model_dir(tmp_path, COSTED_INFERENCE.format(fixed=fixed, per_row=per_row))
    server = start(model_dir, "--max-batch-size", "16", "--log-level", "info")
    stop = threading.Event()
    statuses: list[int] = []

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(server.url(), json=[[1.0, 2.0]], timeout=10)
                statuses.append(answer.status_code)
                assert answer.json() == [[2.0, 4.0]]

    pool = ThreadPoolExecutor(16)
    clients = [pool.submit(client) for _ in range(16)]
    try:
        deadline = time.monotonic() + 60
        metrics = ""
        while "serving_batching_trials_total{" not in metrics and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = requests.get(server.url("/metrics"), timeout=10).text
    finally:
        stop.set()
        for future in clients:
            future.result(timeout=30)
        pool.shutdown()
        server.terminate()
    decisions = [line for line in metrics.splitlines()
                 if line.startswith("serving_batching_trials_total{")]
    trials = [line for line in server.log.splitlines() if "batching trial" in line]
    assert decisions == [f'serving_batching_trials_total{{decision="{decision}"}} 1.0'], \
        (decisions, trials)
    says = "predicting one by one" if decision == "alone" else ": batching"
    assert "windows of each: batched" in server.log and says in server.log
    assert statuses and set(statuses) == {200}
