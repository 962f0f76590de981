"""A Chainer model made here, served through the user's model_fn and the default predict."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import requests

from tests.server_helpers import batch_sizes, run_serve, write_model_dir

pytestmark = pytest.mark.chainer

if os.environ.get("SETUPTOOLS_USE_DISTUTILS") != "stdlib":
    # setuptools' distutils shim is installed at interpreter start: too late to change here.
    pytest.fail("run the tests with SETUPTOOLS_USE_DISTUTILS=stdlib (make test does): "
                "Chainer 7 imports numpy.distutils", pytrace=False)

import chainer  # noqa: E402

NET = """
import chainer
import chainer.functions as F
import chainer.links as L


class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.hidden = L.Linear(4, 16)
            self.out = L.Linear(16, 3)

    def __call__(self, x):
        # Dropout is on only when chainer.config.train is: the handler must turn it off.
        return self.out(F.dropout(F.relu(self.hidden(x)), 0.5))
"""

INFERENCE = """
import os
import chainer
from net import Net


def model_fn(model_dir):
    model = Net()
    chainer.serializers.load_npz(os.path.join(model_dir, "model.npz"), model)
    return model
"""

X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture
def model(tmp_path):
    model_dir = write_model_dir(tmp_path, INFERENCE, {"code/net.py": NET})
    namespace: dict = {}
    exec(NET, namespace)
    net = namespace["Net"]()
    net(X)  # initialise, then keep these weights
    chainer.serializers.save_npz(str(model_dir / "model.npz"), net)
    return model_dir, net


def reference(net, x):
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        return net(x).array


def test_user_model_fn_with_default_predict(serve, model):
    model_dir, net = model
    server = serve(model_dir, "--workers", "1")
    assert "framework: chainer" in server.log  # found from the type model_fn returned
    buf = io.BytesIO()
    np.save(buf, X)
    as_npy = requests.post(server.url(), data=buf.getvalue(), headers={
        "Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert as_npy.status_code == 200, as_npy.text
    assert np.allclose(np.load(io.BytesIO(as_npy.content)), reference(net, X), atol=1e-6)
    as_json = requests.post(server.url(), json=X.tolist())
    assert np.allclose(as_json.json(), reference(net, X), atol=1e-5)  # float64 JSON cast


def test_chainer_without_model_fn_says_to_write_one(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    result = run_serve("--model-dir", str(model_dir), "--framework", "chainer")
    assert result.returncode == 1
    assert "Chainer files hold weights, not the network: define model_fn" in result.stderr


def test_batching_joins_requests_for_the_default_predict(serve, model):
    from concurrent.futures import ThreadPoolExecutor

    model_dir, net = model
    server = serve(model_dir, "--workers", "1", "--max-batch-size", "16",
                   "--max-batch-delay-ms", "100", "--log-level", "DEBUG")
    rng = np.random.default_rng(3)
    bodies = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(16)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda x: requests.post(server.url(), json=x.tolist(),
                                                        timeout=30), bodies))
    for x, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json(), reference(net, x), atol=1e-5)
    sizes = batch_sizes(server.log)
    assert sizes and max(sizes) > 1, f"no joined batch: {sizes}"
