"""The Dockerfile, built for each framework and run for real: ping, invoke, SIGTERM."""

from __future__ import annotations

import textwrap
import time

import numpy as np
import pytest
import requests

from tests.container.engine import REPO, find_engine
from tests.server_helpers import free_port

pytestmark = pytest.mark.container

EXAMPLE = REPO / "examples" / "numpy-linear"


@pytest.fixture(scope="module")
def engine():
    engine, why = find_engine()
    if engine is None:
        pytest.skip(why)
    return engine


def serve_in_container(engine, image, model_dir, tmp_path, *flags):
    port = free_port()
    running = engine.start(image, model_dir, ["serve", "--port", str(port), "--workers", "1",
                                              *flags], tmp_path / "container.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            running.kill()  # removes the container
            raise AssertionError(f"the container exited {running.process.returncode}:\n"
                                 f"{running.log}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return running, url
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    running.kill()
    raise AssertionError(f"no /ping 200 after 120 s:\n{running.log}")


def check_lifecycle(engine, image, model_dir, tmp_path, request, expected):
    running, url = serve_in_container(engine, image, model_dir, tmp_path)
    try:
        answer = request(url)
        assert np.allclose(answer, expected, atol=1e-5), (answer, expected)
        assert engine.user_of(image) == "serving"
        assert running.terminate() == 0, running.log
        assert "Shutting down: Master" in running.log
    finally:
        running.kill()


def build(engine, framework: str) -> str:
    tag = f"localhost/serving-toolkit:{framework}"
    engine.build(tag, REPO, args=engine.framework_args(framework))
    return tag


def post_json(rows):
    def request(url):
        response = requests.post(f"{url}/invocations", json=rows)
        assert response.status_code == 200, response.text
        return np.asarray(response.json())
    return request


def linear(rows):
    with np.load(EXAMPLE / "model" / "linear.npz") as arrays:
        return np.asarray(rows) @ arrays["weight"] + arrays["bias"]


def test_no_framework_image_serves_the_example_and_runs_other_commands(engine, tmp_path):
    image = build(engine, "none")
    check_lifecycle(engine, image, EXAMPLE / "model", tmp_path, post_json([[1, 2, 3]]),
                    linear([[1, 2, 3]]))
    other = engine.run(image, ["python3", "-c", "import serving, os; print(os.getuid())"])
    assert other.returncode == 0 and other.stdout.strip() == "10001"  # not root


def test_no_framework_image_in_multi_model_mode(engine, tmp_path):
    """The image as a multi-model container: ping before any model, then a model loaded
    from a directory the host put there (SageMaker's /opt/ml/models/<name>/model; the
    mounted example here), invoked and unloaded."""
    image = build(engine, "none")
    # The default build is single-model; MULTI_MODEL=true labels the image for SageMaker.
    assert engine.labels_of(image)["com.amazonaws.sagemaker.capabilities.multi-models"] == "false"
    running, url = serve_in_container(engine, image, EXAMPLE / "model", tmp_path, "--multi-model")
    try:
        assert requests.get(f"{url}/models").json() == {"models": []}
        loaded = requests.post(f"{url}/models", json={"model_name": "linear",
                                                      "url": "/opt/ml/model"})
        assert loaded.status_code == 200, loaded.text
        answer = requests.post(f"{url}/models/linear/invoke", json=[[1, 2, 3]])
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json(), linear([[1, 2, 3]]))
        assert requests.delete(f"{url}/models/linear").status_code == 200
        assert requests.post(f"{url}/models/linear/invoke", json=[[1, 2, 3]]).status_code == 404
        assert running.terminate() == 0, running.log
    finally:
        running.kill()


def test_baked_model_image_needs_no_mount(engine, tmp_path):
    build(engine, "none")
    tag = "localhost/serving-example:baked"
    engine.build(tag, EXAMPLE, dockerfile=REPO / "examples" / "bake-model" / "Dockerfile",
                 args={"SERVING_IMAGE": "localhost/serving-toolkit:none"})
    check_lifecycle(engine, tag, None, tmp_path, post_json([[0.5, 0, -1]]), linear([[0.5, 0, -1]]))


def test_pytorch_image_serves_the_translation_example(engine, tmp_path):
    # One of the five workflow examples, built from nothing and served inside the image.
    from tests.examples.conftest import build_example

    model_dir = build_example("translation", tmp_path)

    def translate(url):
        response = requests.post(f"{url}/invocations", json="the man is tall")
        assert response.status_code == 200, response.text
        return response.json()

    running, url = serve_in_container(engine, build(engine, "pytorch"), model_dir, tmp_path)
    try:
        assert translate(url) == "l&apos;homme est grand"
        assert running.terminate() == 0, running.log
    finally:
        running.kill()


@pytest.mark.chainer
def test_chainer_image(engine, tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent("""
        import numpy as np
        import chainer
        import chainer.links as L

        def model_fn(model_dir):
            link = L.Linear(3, 2)
            chainer.serializers.load_npz(f"{model_dir}/linear.npz", link)
            return link
    """))
    weight = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], np.float32)
    bias = np.array([0.25, -0.25], np.float32)
    np.savez(model_dir / "linear.npz", W=weight, b=bias)  # the names load_npz looks for
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    check_lifecycle(engine, build(engine, "chainer"), model_dir, tmp_path, post_json(x.tolist()),
                    x @ weight.T + bias)


@pytest.mark.mxnet
def test_mxnet_image(engine, tmp_path):
    import mxnet as mx

    mx.random.seed(0)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(8, activation="relu"), mx.gluon.nn.Dense(2))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = np.random.default_rng(1).normal(size=(37, 4)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "net"))
    check_lifecycle(engine, build(engine, "mxnet"), model_dir, tmp_path, post_json(x.tolist()),
                    expected)
