"""Multi-model endpoints: the SageMaker multi-model contract on a real ``serve`` with two
workers, with models of three frameworks loaded, listed, invoked and unloaded at run time.

Every step that must reach every worker is repeated until both have answered it (each
answer names its worker's pid, from the models' own code), so a load or unload that only
one worker saw fails the test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.integration.multi_model import load, post_fresh, start
from tests.server_helpers import REPO, every_worker, wait_for, write_model_dir

NUMPY_EXAMPLE = REPO / "examples" / "numpy-linear" / "model"

#: A model whose answer says which worker gave it: its code reports os.getpid().
PID_MODEL = """
    import os

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "scale.txt")) as f:
            return float(f.read())

    def predict_fn(data, model):
        return {"scaled": [x * model for x in data], "pid": os.getpid()}
"""


def pid_model(root: Path, name: str, scale: float, padding: int = 0) -> Path:
    """A model directory of ``root/name`` answering ``x * scale`` and its worker's pid;
    ``padding`` bytes of weights make it count that much in the memory budget."""
    directory = write_model_dir(root / name, PID_MODEL, {"scale.txt": str(scale)})
    if padding:
        (directory / "weights.bin").write_bytes(b"\0" * padding)
    return directory


def test_starts_with_no_model_and_answers_ping(serve, tmp_path):
    server = start(serve, tmp_path)
    assert requests.get(server.url("/ping")).status_code == 200
    assert requests.get(server.url("/models")).json() == {"models": []}
    missing = requests.post(server.url("/models/nothing/invoke"), json=[1])
    assert missing.status_code == 404
    assert missing.json()["message"] == "model nothing is not loaded"
    # /invocations must say which model.
    bare = requests.post(server.url(), json=[1])
    assert bare.status_code == 400 and "X-Amzn-SageMaker-Target-Model" in bare.json()["message"]


def test_absent_model_directory_is_fine_too(serve, tmp_path):
    server = serve(tmp_path / "absent", "--multi-model", "--workers", "1")
    assert requests.get(server.url("/ping")).status_code == 200


def test_load_reaches_every_worker_and_unload_leaves_none(serve, tmp_path):
    server = start(serve, tmp_path)
    first = pid_model(tmp_path, "a", 2.0)
    loaded = load(server, "a", first)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["modelName"] == "a"
    # Both workers answer for it: the one that loaded it and the one that learns of it.
    for response in every_worker(lambda: post_fresh(server.url("/models/a/invoke"), json=[1, 2])):
        assert response.json()["scaled"] == [2.0, 4.0]
        assert response.headers["X-Request-Id"]
    # Twice is a conflict, whichever worker is asked.
    for _ in range(4):
        again = load(server, "a", first)
        assert again.status_code == 409 and again.json()["type"] == "Conflict"

    gone = requests.delete(server.url("/models/a"), headers={"Connection": "close"})
    assert gone.status_code == 200, gone.text
    for _ in range(8):  # neither worker answers for it any more
        after = post_fresh(server.url("/models/a/invoke"), json=[1])
        assert after.status_code == 404, after.text
        assert requests.get(server.url("/models/a"), headers={"Connection": "close"}) \
            .status_code == 404
    assert requests.delete(server.url("/models/a")).status_code == 404

    # Loaded again, from another directory: every worker answers with the new model.
    load(server, "a", pid_model(tmp_path, "a2", 10.0)).raise_for_status()
    for response in every_worker(lambda: post_fresh(server.url("/models/a/invoke"), json=[1])):
        assert response.json()["scaled"] == [10.0]


def test_list_pages_and_describe(serve, tmp_path):
    server = start(serve, tmp_path)
    names = [f"model-{i:02d}" for i in range(7)]
    for name in names:
        load(server, name, pid_model(tmp_path, name, 1.0)).raise_for_status()
    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 3, **({"next_page_token": token} if token else {})}
        page = requests.get(server.url("/models"), params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [m["modelName"] for m in body["models"]]
        pages += 1
        token = body.get("nextPageToken")
        if token is None:
            break
    assert seen == names and pages == 3
    assert requests.get(server.url("/models/model-03")).json() == {
        "modelName": "model-03", "modelUrl": str(tmp_path / "model-03" / "model")}
    assert requests.get(server.url("/models"), params={"next_page_token": "%%%"}) \
        .status_code == 400
    assert requests.get(server.url("/models"), params={"page_size": "0"}).status_code == 400


def test_bad_load_requests_are_4xx(serve, tmp_path):
    server = start(serve, tmp_path)
    cases = [
        ({"model_name": "x"}, 400),  # no url
        ({"url": str(tmp_path)}, 400),  # no name
        ({"model_name": "../x", "url": str(tmp_path)}, 400),
        ({"model_name": "x", "url": str(tmp_path / "nowhere")}, 400),
        ({"model_name": "x", "url": "relative/path"}, 400),
        ({"model_name": "x", "url": str(tmp_path / "no-model")}, 400),  # nothing to serve
    ]
    for body, status in cases:
        response = requests.post(server.url("/models"), json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["request_id"]
    # Nothing loads from outside the root (--multi-model-root: tmp_path here), however
    # the url gets there: a path above it, "..", a symlink inside pointing out.
    outside = write_model_dir(tmp_path.parent / f"{tmp_path.name}-outside",
                              "def model_fn(model_dir):\n    return 1\n")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    for url in (str(outside), f"{tmp_path}/../{tmp_path.name}-outside/model",
                str(tmp_path / "link"), "/etc"):
        response = requests.post(server.url("/models"), json={"model_name": "x", "url": url})
        assert response.status_code == 400, (url, response.text)
        assert "--multi-model-root" in response.json()["message"]
    assert requests.get(server.url("/models")).json() == {"models": []}
    not_json = requests.post(server.url("/models"), data=b"model_name=x",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 400
    # A model_fn that raises: 500 with the stage, and nothing is listed.
    broken = write_model_dir(tmp_path / "broken", "def model_fn(model_dir):\n    raise OSError('x')\n")
    failed = load(server, "broken", broken)
    assert failed.status_code == 500 and failed.json()["stage"] == "load"
    assert requests.get(server.url("/models")).json() == {"models": []}
    assert "Traceback" in server.log


def test_memory_budget_unloads_the_least_recently_used(serve, tmp_path):
    mib = 2**20
    server = start(serve, tmp_path, "--models-memory-mb", "3.5")
    for name in ("a", "b"):
        load(server, name, pid_model(tmp_path, name, 1.0, padding=mib)).raise_for_status()
    time.sleep(1.1)  # uses are recorded at most once a second per worker
    for _ in range(4):  # a is used since b was loaded: b is the least recently used
        assert post_fresh(server.url("/models/a/invoke"), json=[1]).status_code == 200
    load(server, "c", pid_model(tmp_path, "c", 1.0, padding=mib)).raise_for_status()
    names = [m["modelName"] for m in requests.get(server.url("/models")).json()["models"]]
    assert names == ["a", "b", "c"]  # 3 x 1 MiB (and a little) fits 3.5 MiB
    load(server, "d", pid_model(tmp_path, "d", 1.0, padding=mib)).raise_for_status()
    names = [m["modelName"] for m in requests.get(server.url("/models")).json()["models"]]
    assert "b" not in names and "a" in names and "d" in names, names
    assert post_fresh(server.url("/models/b/invoke"), json=[1]).status_code == 404
    # One model larger than the whole budget: 507, and nothing was unloaded for it.
    huge = load(server, "huge", pid_model(tmp_path, "huge", 1.0, padding=4 * mib))
    assert huge.status_code == 507 and huge.json()["type"] == "InsufficientStorage"
    assert [m["modelName"] for m in requests.get(server.url("/models")).json()["models"]] \
        == names
    # A load that makes room, then fails: what it unloaded is gone from every worker.
    broken = write_model_dir(tmp_path / "broken", "def model_fn(model_dir):\n    raise OSError('x')\n",
                             {"weights.txt": "0" * mib})
    assert load(server, "broken", broken).status_code == 500
    left = [m["modelName"] for m in requests.get(server.url("/models")).json()["models"]]
    assert len(left) == len(names) - 1, left
    gone = (set(names) - set(left)).pop()
    for _ in range(8):
        assert post_fresh(server.url(f"/models/{gone}/invoke"), json=[1]).status_code == 404


def test_a_load_that_never_ends_holds_up_other_loads_only_until_the_deadline(serve, tmp_path):
    server = start(serve, tmp_path, "--request-timeout", "1")
    slow = write_model_dir(tmp_path / "slow", "import time\n\ndef model_fn(model_dir):\n"
                           "    time.sleep(4)\n    return lambda x: x\n")
    import threading

    slow_load = threading.Thread(target=load, args=(server, "slow", slow))
    slow_load.start()
    time.sleep(0.5)  # the slow load holds the lock
    started = time.monotonic()
    waiting = load(server, "a", pid_model(tmp_path, "a", 1.0))
    assert waiting.status_code == 503, waiting.text
    assert "try again" in waiting.json()["message"]
    assert time.monotonic() - started < 3
    assert requests.get(server.url("/ping")).status_code == 200
    slow_load.join(30)
    assert load(server, "a", pid_model(tmp_path, "a2", 1.0)).status_code == 200


def test_a_restarted_worker_answers_for_every_loaded_model(serve, tmp_path):
    server = start(serve, tmp_path)
    load(server, "a", pid_model(tmp_path, "a", 3.0)).raise_for_status()
    pids = {r.json()["pid"] for r in
            every_worker(lambda: post_fresh(server.url("/models/a/invoke"), json=[1]))}
    victim = pids.pop()
    os.kill(victim, signal.SIGKILL)

    def fresh_worker_answers():
        response = post_fresh(server.url("/models/a/invoke"), json=[1])
        assert response.status_code == 200, response.text  # the survivor meanwhile
        assert response.json()["scaled"] == [3.0]
        return response.json()["pid"] not in (victim, *pids)

    # The fresh worker was forked with no model: it learns of "a" and loads it.
    wait_for(fresh_worker_answers, timeout=30, what="the restarted worker to answer")


def test_invocations_with_the_target_model_header(serve, tmp_path):
    server = start(serve, tmp_path)
    load(server, "a", pid_model(tmp_path, "a", 5.0)).raise_for_status()
    response = requests.post(server.url(), json=[2],
                             headers={"X-Amzn-SageMaker-Target-Model": "a"})
    assert response.status_code == 200 and response.json()["scaled"] == [10.0]
    assert requests.post(server.url(), json=[2], headers={
        "X-Amzn-SageMaker-Target-Model": "b"}).status_code == 404
    # boto3's invoke_endpoint with TargetModel, as against a real multi-model endpoint.
    from tests.integration.test_streaming import boto3_stream

    got = boto3_stream(server, [3], target_model="a")
    assert json.loads(got["plain"])["scaled"] == [15.0]


def test_single_model_server_is_the_model_named_default(serve):
    server = serve(NUMPY_EXAMPLE, "--workers", "1")
    assert requests.get(server.url("/models")).json() == {
        "models": [{"modelName": "default", "modelUrl": str(NUMPY_EXAMPLE)}]}
    by_name = requests.post(server.url("/models/default/invoke"), json=[[1, 2, 3]])
    plain = requests.post(server.url(), json=[[1, 2, 3]])
    assert by_name.status_code == 200 and by_name.content == plain.content
    assert requests.post(server.url("/models/other/invoke"), json=[[1, 2, 3]]).status_code == 404
    # Loading and unloading belong to multi-model servers.
    assert requests.post(server.url("/models"), json={"model_name": "x", "url": "/"}) \
        .status_code == 405
    assert requests.delete(server.url("/models/default")).status_code == 405


@pytest.mark.mxnet
def test_three_frameworks_across_two_workers(serve, tmp_path):
    """NumPy (user code), TorchScript and an MXNet export (the default handlers), each
    loaded, invoked on both workers with answers equal to the framework's own, unloaded,
    404 after, and loaded again."""
    import mxnet as mx
    import torch
    from mxnet import gluon

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype(np.float32)

    numpy_dir = tmp_path / "numpy"
    shutil.copytree(NUMPY_EXAMPLE, numpy_dir)
    with np.load(numpy_dir / "linear.npz") as arrays:
        numpy_expected = x.astype(np.float64) @ arrays["weight"] + arrays["bias"]

    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh()).eval()
    torch.jit.script(net).save(str(torch_dir / "model.pt"))
    with torch.no_grad():
        torch_expected = net(torch.from_numpy(x)).numpy()

    mxnet_dir = tmp_path / "mxnet"
    mxnet_dir.mkdir()
    mx.random.seed(0)
    block = gluon.nn.HybridSequential()
    block.add(gluon.nn.Dense(2))
    block.initialize(mx.init.Xavier())
    block.hybridize()
    mxnet_expected = block(mx.nd.array(x)).asnumpy()
    block.export(str(mxnet_dir / "dense"), epoch=0)

    server = start(serve, tmp_path)
    models = {"linear": (numpy_dir, numpy_expected), "scripted": (torch_dir, torch_expected),
              "dense": (mxnet_dir, mxnet_expected)}
    for name, (directory, _) in models.items():
        response = load(server, name, directory)
        assert response.status_code == 200, response.text
    listed = requests.get(server.url("/models")).json()["models"]
    assert sorted(m["modelName"] for m in listed) == sorted(models)

    def ask(name):
        buf = io.BytesIO()
        np.save(buf, x)
        return post_fresh(server.url(f"/models/{name}/invoke"), data=buf.getvalue(),
                          headers={"Content-Type": "application/x-npy",
                                   "Accept": "application/x-npy"})

    def loads_of(directory):
        return sum(1 for line in server.log.splitlines()
                   if "loading the model" in line and str(directory) in line)

    for name, (directory, expected) in models.items():
        deadline = time.monotonic() + 30  # until both workers have answered with it (the
        while time.monotonic() < deadline:  # second may boot late on a loaded machine)
            response = ask(name)
            assert response.status_code == 200, (name, response.text)
            np.testing.assert_allclose(np.load(io.BytesIO(response.content)), expected,
                                       rtol=1e-5, atol=1e-5)
            if loads_of(directory) == 2:
                break
        # Each worker loads a model once: the one that took POST /models then, the other
        # on its first use; two loads mean both answered with it.
        assert loads_of(directory) == 2, server.log
    assert server.log.count("framework: mxnet,") == 2
    assert server.log.count("framework: pytorch,") == 2

    for name in models:
        assert requests.delete(server.url(f"/models/{name}")).status_code == 200
    for name in models:
        for _ in range(4):
            assert ask(name).status_code == 404
    assert requests.get(server.url("/models")).json() == {"models": []}

    for name, (directory, expected) in models.items():
        assert load(server, name, directory).status_code == 200
        np.testing.assert_allclose(np.load(io.BytesIO(ask(name).content)), expected,
                                   rtol=1e-5, atol=1e-5)
