"""MXNet checkpoints made here, served by the default loader; answers equal MXNet's own."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests

from tests.server_helpers import batch_sizes, run_serve, write_model_dir

pytestmark = pytest.mark.mxnet

import mxnet as mx  # noqa: E402
from mxnet import gluon  # noqa: E402


def gluon_net():
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(16, activation="relu"), gluon.nn.Dropout(0.5), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    return net


def ask(server, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    as_json = requests.post(server.url(), json=x.tolist())
    assert as_json.status_code == 200, as_json.text
    buf = io.BytesIO()
    np.save(buf, x)
    as_npy = requests.post(server.url(), data=buf.getvalue(), headers={
        "Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert as_npy.status_code == 200, as_npy.text
    return np.asarray(as_json.json()), np.load(io.BytesIO(as_npy.content))


@pytest.mark.parametrize("rows", [1, 37])
def test_exported_gluon_block_any_batch_size(serve, tmp_path, rows):
    net = gluon_net()
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()  # also fixes the shapes before export
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "classifier"), epoch=3)
    server = serve(model_dir, "--workers", "1")
    for batch in (x, np.tile(x, (3, 1))):  # the batch size is free, not the first one seen
        from_json, from_npy = ask(server, batch)
        want = net(mx.nd.array(batch)).asnumpy()
        assert np.allclose(from_npy, want, atol=1e-5) and np.allclose(from_json, want, atol=1e-5)
    assert np.allclose(ask(server, x)[1], expected, atol=1e-5)


def test_module_checkpoint_with_a_softmax_head(serve, tmp_path):
    data = mx.sym.Variable("data")
    hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=8, name="fc1"), "relu")
    out = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(hidden, num_hidden=3, name="fc2"),
                               name="softmax")
    module = mx.mod.Module(out, data_names=["data"], label_names=["softmax_label"])
    module.bind(data_shapes=[("data", (1, 4))], label_shapes=[("softmax_label", (1,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    module.save_checkpoint(str(model_dir / "legacy"), 12)
    newest = [{k: v.copy() for k, v in params.items()} for params in module.get_params()]
    module.init_params(mx.init.Uniform(5), force_init=True)
    module.save_checkpoint(str(model_dir / "legacy"), 3)  # an older epoch: not the one served
    module.set_params(*newest)
    x = np.random.default_rng(5).normal(size=(37, 4)).astype(np.float32)
    arg, _ = module.get_params()
    hidden_np = np.maximum(x @ arg["fc1_weight"].asnumpy().T + arg["fc1_bias"].asnumpy(), 0)
    logits = hidden_np @ arg["fc2_weight"].asnumpy().T + arg["fc2_bias"].asnumpy()
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    server = serve(model_dir, "--workers", "1")
    for batch in (x[:1], x):
        _, from_npy = ask(server, batch)
        assert np.allclose(from_npy, expected[: len(batch)], atol=1e-5)
        assert np.allclose(from_npy.sum(axis=1), 1, atol=1e-5)  # softmax rows


def test_user_gluon_block_through_model_fn(serve, tmp_path):
    model_dir = write_model_dir(tmp_path, """
        import mxnet as mx
        from mxnet import gluon

        class Scale(gluon.Block):  # not hybridizable: a plain imperative block
            def __init__(self):
                super().__init__()
                with self.name_scope():
                    self.dense = gluon.nn.Dense(2, in_units=4)

            def forward(self, x):
                return self.dense(x) * 2

        def model_fn(model_dir, context):
            net = Scale()
            net.load_parameters(f"{model_dir}/scale.params", ctx=mx.cpu())
            return net
    """)
    namespace: dict = {}
    exec("import mxnet as mx\nfrom mxnet import gluon\n"
         "class Scale(gluon.Block):\n"
         "    def __init__(self):\n        super().__init__()\n"
         "        with self.name_scope():\n            self.dense = gluon.nn.Dense(2, in_units=4)\n"
         "    def forward(self, x):\n        return self.dense(x) * 2\n", namespace)
    net = namespace["Scale"]()
    net.initialize(mx.init.Xavier())
    net.save_parameters(str(model_dir / "scale.params"))
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    server = serve(model_dir, "--workers", "1")
    assert "framework: mxnet" in server.log
    _, from_npy = ask(server, x)
    assert np.allclose(from_npy, net(mx.nd.array(x)).asnumpy(), atol=1e-5)


def test_two_checkpoints_are_ambiguous(tmp_path):
    net = gluon_net()
    net(mx.nd.ones((1, 4)))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "a"))
    net.export(str(model_dir / "b"))
    result = run_serve("--model-dir", str(model_dir))
    assert result.returncode == 1
    assert "holds 2 (a, b): keep one or define model_fn" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(mx.context.num_gpus() == 0, reason="no CUDA GPU on this machine")
def test_mxnet_on_cuda(serve, tmp_path):
    net = gluon_net()
    x = np.random.default_rng(3).normal(size=(37, 4)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "classifier"))
    server = serve(model_dir, "--device", "cuda:0")
    assert "device: cuda:0" in server.log
    assert np.allclose(ask(server, x)[1], expected, atol=1e-4)


def test_batching_joins_requests_for_the_default_predict(serve, tmp_path):
    # Concurrent requests of 1-3 rows each, joined by the batcher into one forward pass of
    # the exported block, come back equal to MXNet's own answer for each request alone.
    from concurrent.futures import ThreadPoolExecutor

    net = gluon_net()
    rng = np.random.default_rng(7)
    bodies = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(16)]
    net(mx.nd.array(bodies[0]))  # fixes the shapes before export
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "classifier"))
    server = serve(model_dir, "--workers", "1", "--max-batch-size", "16",
                   "--max-batch-delay-ms", "100", "--log-level", "DEBUG")
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda x: requests.post(server.url(), json=x.tolist(),
                                                        timeout=30), bodies))
    for x, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json(), net(mx.nd.array(x)).asnumpy(), atol=1e-5)
    sizes = batch_sizes(server.log)
    assert sizes and max(sizes) > 1, f"no joined batch: {sizes}"
