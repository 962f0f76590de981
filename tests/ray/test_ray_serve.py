"""The Ray engine against the gunicorn one: the same examples, the same bytes; two
replicas on a local Ray instance; a killed replica replaced; batching on @serve.batch.

Run in .venv-ray (``make test-ray``): Ray is not in the other environments."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import random
import signal
import sys
import time

import pytest
import requests

from tests.examples.conftest import build_example
from tests.ray.conftest import serving
from tests.server_helpers import REPO, wait_for, write_model_dir

sys.path.insert(0, str(REPO / "examples" / "image-classifier"))
from shapes import CLASSES, draw, jpeg  # noqa: E402

TWO_REPLICAS = ("--ray-replicas", "2", "--ray-num-cpus", "0.5")


def exchange(server, path: str, body: bytes, headers: dict[str, str], rid: str):
    """One request with a fixed request id (it is in error bodies): status, type, body."""
    response = requests.post(server.url(path), data=body,
                             headers={**headers, "X-Request-Id": rid}, timeout=60)
    return response.status_code, response.headers.get("Content-Type"), response.content


def numpy_linear_requests():
    return [
        ("/invocations", b"[[1, 2, 3], [4, 5, 6]]", {"Content-Type": "application/json"}),
        ("/invocations", b"1,2,3\n4,5,6\n", {"Content-Type": "text/csv", "Accept": "text/csv"}),
        ("/endpoints/any/invocations", b"[[0.5, 0.25, 1]]", {"Content-Type": "application/json"}),
        ("/invocations", b"[[1, 2, 3, 4]]", {"Content-Type": "application/json"}),  # 422
        ("/invocations", b"[[1, 2", {"Content-Type": "application/json"}),  # 400
        ("/invocations", b"1,2,3", {"Content-Type": "application/x-unknown"}),  # 415
        ("/invocations", b"[[1, 2, 3]]", {"Content-Type": "application/json",
                                          "Accept": "image/png"}),  # 406
        ("/invocations", b"[" * 10 + b"]" * 10, {"Content-Type": "application/json"}),
        # Past SAGEMAKER_MAX_PAYLOAD_IN_MB (6 MiB): 413, refused from its Content-Length.
        ("/invocations", b" " * (7 * 2**20), {"Content-Type": "application/json"}),
    ]


def translation_requests():
    return [("/invocations", json.dumps(text).encode(), {"Content-Type": "application/json"})
            for text in ("The man is tall", "where is the station ?", "I love the sea")] + [
        ("/invocations", b"[1, 2]", {"Content-Type": "application/json"}),  # 400
        ("/invocations", b"the cat", {"Content-Type": "text/plain"}),  # 415
    ]


def image_requests():
    rng = random.Random(5)
    from PIL import Image

    pictures = [jpeg(draw(CLASSES[i % 3], rng)) for i in range(4)]
    png = io.BytesIO()
    Image.open(io.BytesIO(pictures[0])).save(png, format="PNG")
    return [("/invocations", body, {"Content-Type": "image/jpeg"}) for body in pictures] + [
        ("/invocations", png.getvalue(), {"Content-Type": "image/png"}),
        ("/invocations", b"\xff\xd8\xff not a jpeg", {"Content-Type": "image/jpeg"}),  # 400
    ]


EXAMPLES = {
    "numpy-linear": numpy_linear_requests,
    "translation": translation_requests,
    "image-classifier": image_requests,
}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_ray_answers_what_gunicorn_answers(example, tmp_path):
    if example == "numpy-linear":
        model_dir = REPO / "examples" / "numpy-linear" / "model"
    else:
        model_dir = build_example(example, tmp_path)
    cases = EXAMPLES[example]()
    answers = {}
    with serving(model_dir, "--workers", "1", engine="gunicorn",
                 log_path=tmp_path / "gunicorn.log") as server:
        answers["gunicorn"] = [exchange(server, *case, rid=f"case-{i}")
                               for i, case in enumerate(cases)]
        ping = requests.get(server.url("/ping"))
        answers["gunicorn"].append((ping.status_code, ping.headers.get("Content-Type"),
                                    ping.content))
    with serving(model_dir, *TWO_REPLICAS, engine="ray", log_path=tmp_path / "ray.log") as server:
        answers["ray"] = [exchange(server, *case, rid=f"case-{i}")
                          for i, case in enumerate(cases)]
        ping = requests.get(server.url("/ping"))
        answers["ray"].append((ping.status_code, ping.headers.get("Content-Type"), ping.content))
        metrics = requests.get(server.url("/metrics")).text
    statuses = [status for status, _, _ in answers["gunicorn"]]
    assert 200 in statuses and any(400 <= s < 500 for s in statuses), statuses
    for case, ours, theirs in zip(cases + [("/ping",)], answers["gunicorn"], answers["ray"]):
        assert theirs == ours, f"{case[0]} {case[2:]}: gunicorn {ours!r} != ray {theirs!r}"
    for status, _, body in answers["ray"]:
        if status >= 400:
            error = json.loads(body)
            assert error["code"] == status and error["message"]
    # /metrics through Ray: the replicas' counts, added up (they flush every 0.25 s).
    assert "serving_requests_total" in metrics


PID_MODEL = '''
import os, time
import numpy as np
from serving import ClientError, batched

def model_fn(model_dir):
    return model_dir

@batched
def predict_fn(data, model):
    """Each row: its sum, the replica's pid, and how many rows its batch had."""
    if (data == -1).any():  # the slow request: says where it runs, then takes its time
        with open(os.path.join(os.environ["PID_DIR"], "slow.pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    if (data == 999).any():
        raise ClientError("999 is not a number this model takes", status_code=422)
    rows = len(data)
    return np.column_stack([data.sum(axis=1), np.full(rows, os.getpid()),
                            np.full(rows, rows)]).astype(np.float64)
'''


def ask(server, row, timeout=30):
    response = requests.post(server.url(), json=[row], timeout=timeout)
    return response


@pytest.fixture(scope="module")
def pid_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pid-model")
    model_dir = write_model_dir(root, PID_MODEL)
    with serving(model_dir, *TWO_REPLICAS, "--max-batch-size", "8", "--max-batch-delay-ms",
                 "100", "--request-timeout", "120", engine="ray",
                 env={"PID_DIR": str(root)}, log_path=root / "ray.log") as server:
        server.pid_dir = root
        yield server


def test_batching_through_ray_joins_requests_and_isolates_a_bad_one(pid_server):
    rows = [[i, 1.0] for i in range(24)] + [[999.0, 1.0]]
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        answers = list(pool.map(lambda row: ask(pid_server, row), rows))
    *good, bad = answers
    assert bad.status_code == 422 and "999" in bad.json()["message"]
    assert [a.status_code for a in good] == [200] * len(good), [a.text for a in good]
    for row, answer in zip(rows, good):
        total, _, _ = answer.json()[0]
        assert total == sum(row)  # its own answer, never a neighbour's
    sizes = [answer.json()[0][2] for answer in good]
    assert max(sizes) > 1, f"no two requests were joined: batch sizes {sizes}"


def test_a_killed_replica_is_replaced_and_only_its_request_fails(pid_server):
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for answer in pool.map(lambda i: ask(pid_server, [i, 0.0]), range(4)):
                assert answer.status_code == 200, answer.text
                pids.add(int(answer.json()[0][1]))
    assert len(pids) == 2, f"two replicas, but answers came from {pids}"

    marker = pid_server.pid_dir / "slow.pid"
    marker.unlink(missing_ok=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(ask, pid_server, [-1.0, 0.0], 90)
        wait_for(marker.exists, 30, "the slow request to start")
        time.sleep(0.2)
        victim = int(marker.read_text())
        assert victim in pids
        os.kill(victim, signal.SIGKILL)
        # Meanwhile every other request is answered, by the replica still alive.
        others = [ask(pid_server, [i, 2.0]) for i in range(20)]
        failed = slow.result()
    assert failed.status_code >= 500
    assert [a.status_code for a in others] == [200] * 20, [a.text for a in others]
    assert victim not in {int(a.json()[0][1]) for a in others}
    # Ray starts a new replica in its place: answers come from a pid not seen before.
    seen = set()

    def replaced() -> bool:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for answer in pool.map(lambda i: ask(pid_server, [i, 3.0]), range(4)):
                assert answer.status_code == 200, answer.text
                seen.add(int(answer.json()[0][1]))
        return bool(seen - pids)

    wait_for(replaced, 120, "a new replica in place of the killed one")
    assert victim not in seen


def test_a_stream_fn_is_a_clear_start_up_error_on_ray(tmp_path):
    """Ray Serve takes WebSockets only through a FastAPI ingress: a model that answers
    bidirectional streams must not start on Ray as if it were served."""
    from tests.ray.conftest import RAY_READY_SECONDS, Served

    model_dir = write_model_dir(tmp_path, """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data

        def stream_fn(messages, model):
            yield from messages
    """)
    served = Served(model_dir, engine="ray", log_path=tmp_path / "ray.log")
    try:
        status = served.proc.wait(RAY_READY_SECONDS)
    finally:
        served.stop(timeout=10)
    assert status != 0
    assert "stream_fn (bidirectional streaming) is served by --engine gunicorn only" in served.log
