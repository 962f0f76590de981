"""The Dockerfile, built for each framework and run for real: ping, invoke, SIGTERM."""

from __future__ import annotations

import os
import shutil
import textwrap
import time

import numpy as np
import pytest
import requests

from tests.container.engine import REPO, find_engine
from tests.server_helpers import free_port, write_wheel

pytestmark = pytest.mark.container

EXAMPLE = REPO / "examples" / "numpy-linear"


@pytest.fixture(scope="module")
def engine():
    engine, why = find_engine()
    if engine is None:
        pytest.skip(why)
    return engine


#: The image's unprivileged user (Dockerfile: useradd --uid 10001).
SERVING_UID = 10001


def serve_in_container(engine, image, model_dir, tmp_path, *flags, workers=1, **options):
    port = free_port()
    running = engine.start(image, model_dir, ["serve", "--port", str(port), "--workers",
                                              str(workers), *flags],
                           tmp_path / "container.log", **options)
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
        assert engine.user_of(image) == "root"  # as SageMaker starts it; served as serving
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


def server_processes(running, expected: int = 2) -> list[dict]:
    """The container's processes once ``expected`` of them are up (the master and each
    worker: gunicorn's proc_name makes them 'serving' in ps). The first answer can come
    before the last worker is forked, on a busy machine."""
    deadline = time.monotonic() + 30
    while True:
        found = running.processes()
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def assert_all_run_as(processes, uid, gid, log):
    assert processes, log
    for process in processes:
        assert process["uids"] == [uid] * 4, (process, log)  # real, effective, saved, fs
        assert process["gids"] == [gid] * 4, (process, log)


def test_started_as_root_every_server_process_runs_as_serving(engine, tmp_path):
    """The image's default start (root, as SageMaker starts it): the entrypoint drops to
    `serving` before serve starts; no process in the container keeps root or any
    capability, and none can get them back (no_new_privs)."""
    image = build(engine, "none")
    assert engine.user_of(image) == "root"
    running, url = serve_in_container(engine, image, EXAMPLE / "model", tmp_path, workers=2)
    try:
        answer = post_json([[1, 2, 3]])(url)
        assert np.allclose(answer, linear([[1, 2, 3]]))
        processes = server_processes(running, expected=3)
        print("uids seen, started as root:",
              [(p["pid"], p["uids"], p["gids"], p["groups"], " ".join(p["command"])[:60])
               for p in processes])
        assert len(processes) == 3, processes  # the master and two workers, nothing else
        assert_all_run_as(processes, SERVING_UID, SERVING_UID, running.log)
        assert all(p["cap_eff"] == 0 and p["no_new_privs"] == 1 for p in processes), processes
        assert f"running as uid {SERVING_UID}" in running.log, running.log
        assert "devices: " in running.log and "no GPU" in running.log, running.log
        assert running.terminate() == 0, running.log
    finally:
        running.kill()


def test_arbitrary_uid_in_group_0_serves_and_installs_requirements(engine, tmp_path):
    """Started as a uid the image does not know, in group 0 (OpenShift's way; Kubernetes'
    runAsUser is the same): it serves as that uid, with a home in /tmp, and installs the
    model's requirements.txt where it may write (the environment is not its own)."""
    image = build(engine, "none")
    model_dir = tmp_path / "model"
    code = model_dir / "code"
    code.mkdir(parents=True)
    write_wheel(code, "doubler", {"doubler.py": "def double(x):\n    return 2 * x\n"})
    (code / "requirements.txt").write_text("./doubler-0.1-py3-none-any.whl\n")
    (code / "inference.py").write_text(textwrap.dedent("""
        import os
        import doubler

        def model_fn(model_dir):
            return doubler

        def predict_fn(data, model):
            return {"doubled": model.double(data), "uid": os.getuid(),
                    "home": os.environ["HOME"], "from": model.__file__}
    """))
    running, url = serve_in_container(engine, image, model_dir, tmp_path, user="12345:0")
    try:
        response = requests.post(f"{url}/invocations", json=21)
        assert response.status_code == 200, (response.text, running.log)
        answer = response.json()
        assert answer["doubled"] == 42 and answer["uid"] == 12345, answer
        assert answer["home"] == "/tmp/serving-home-12345", answer
        assert answer["from"].startswith("/tmp/serving-requirements-12345/"), answer
        processes = server_processes(running)
        print("uids seen, --user 12345:0:", [(p["pid"], p["uids"], p["gids"]) for p in processes])
        assert_all_run_as(processes, 12345, 0, running.log)
        assert running.terminate() == 0, running.log
    finally:
        running.kill()


def test_model_only_root_may_read_stops_startup_unless_run_as_root(engine, tmp_path):
    """SageMaker unpacks model.tar.gz as root: a model directory only root may read stops
    the server with a message naming it, its owner and mode, and SERVING_RUN_AS=root,
    which then serves it as root."""
    image = build(engine, "none")
    model_dir = tmp_path / "root-only"
    shutil.copytree(EXAMPLE / "model", model_dir)
    os.chown(model_dir, 0, 0)
    model_dir.chmod(0o700)
    port = free_port()
    running = engine.start(image, model_dir, ["serve", "--port", str(port)],
                           tmp_path / "refused.log")
    try:
        code = running.process.wait(120)
        log = running.log
        assert code != 0, log
        assert "Traceback" not in log, log
        assert "/opt/ml/model is not readable by uid 10001" in log, log
        assert "owned by uid 0 (root)" in log and "mode 0700" in log, log
        assert "SERVING_RUN_AS=root" in log, log
    finally:
        running.kill()
    running, url = serve_in_container(engine, image, model_dir, tmp_path,
                                      env={"SERVING_RUN_AS": "root"})
    try:
        assert np.allclose(post_json([[1, 2, 3]])(url), linear([[1, 2, 3]]))
        processes = server_processes(running)
        print("uids seen, SERVING_RUN_AS=root:", [(p["pid"], p["uids"]) for p in processes])
        assert_all_run_as(processes, 0, 0, running.log)
        assert "SERVING_RUN_AS=root: running as root" in running.log, running.log
        assert running.terminate() == 0, running.log
    finally:
        running.kill()


def test_server_writes_nothing_outside_tmp_and_dev_shm(engine, tmp_path):
    """Start-up, 100 requests (answers, a bad request, /metrics, /ping) and shutdown change
    nothing of the image's filesystem outside /tmp and /dev/shm: it runs on Kubernetes'
    readOnlyRootFilesystem with those two as emptyDir volumes."""
    image = build(engine, "none")
    running, url = serve_in_container(engine, image, EXAMPLE / "model", tmp_path, workers=2,
                                      watch_writes=True)
    try:
        with requests.Session() as session:
            for i in range(100):
                if i % 10 == 0:
                    bad = session.post(f"{url}/invocations", data=b"[[1, 2",
                                       headers={"Content-Type": "application/json"})
                    assert bad.status_code == 400, bad.text
                elif i % 10 == 1:
                    assert session.get(f"{url}/metrics").status_code == 200
                else:
                    answer = session.post(f"{url}/invocations", json=[[i, 0, 1]])
                    assert answer.status_code == 200, answer.text
        assert running.terminate() == 0, running.log
        assert running.written() == [], running.log
    finally:
        running.kill()


def test_no_framework_image_in_multi_model_mode(engine, tmp_path):
    """The image as a multi-model container: ping before any model, then a model loaded
    from a directory the host put there (SageMaker's /opt/ml/models/<name>/model; the
    mounted example here), invoked and unloaded."""
    image = build(engine, "none")
    # The default build is single-model; MULTI_MODEL=true labels the image for SageMaker.
    labels = engine.labels_of(image)
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "false"
    # Bidirectional streaming likewise: SageMaker opens streams only to a labelled image.
    assert labels["com.amazonaws.sagemaker.capabilities.bidirectional-streaming"] == "false"
    running, url = serve_in_container(engine, image, EXAMPLE / "model", tmp_path, "--multi-model",
                                      "--multi-model-root", "/opt/ml/model")
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
