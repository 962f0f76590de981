"""The real ``serve`` process, over HTTP."""

from __future__ import annotations

import http.client
import io
import json
import sys
import tarfile
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.server_helpers import REPO, free_port, pip_uninstall, run_serve, write_model_dir, write_wheel

EXAMPLE = REPO / "examples" / "numpy-linear" / "model"

# A model whose predict_fn can be told to fail or wait, and that reports where it ran.
TOOLBOX = """
    import os, time
    import numpy as np
    from serving import ClientError

    def model_fn(model_dir, context):
        with open(os.path.join(model_dir, "loads.txt"), "a") as f:
            f.write(f"{os.getpid()} {context.worker_index}\\n")
        delay = float(open(os.path.join(model_dir, "load_delay.txt")).read())
        time.sleep(delay)
        return lambda x: x * 2

    def predict_fn(data, model, context):
        if isinstance(data, dict):
            if "sleep" in data:
                open(os.path.join(context.model_dir, "started"), "w").close()
                time.sleep(data["sleep"])
                return {"slept": data["sleep"]}
            if "fail" in data:
                raise RuntimeError(data["fail"])
            if "reject" in data:
                raise ClientError(data["reject"], status_code=422)
            if "whoami" in data:
                return {"pid": os.getpid(), "worker": context.worker_index}
        return model(data)
"""


@pytest.fixture
def toolbox(tmp_path):
    return write_model_dir(tmp_path, TOOLBOX, {"load_delay.txt": "0"})


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def linear(rows):
    with np.load(EXAMPLE / "linear.npz") as arrays:
        return np.asarray(rows, dtype=np.float64) @ arrays["weight"] + arrays["bias"]


# -- the bundled example, as `make serve` runs it ------------------------------


def test_serve_console_script_answers_the_readme_curl(serve):
    serve_script = str(Path(sys.executable).parent / "serve")
    server = serve(EXAMPLE, "--workers", "1", command=[serve_script])
    response = requests.post(server.url(), data="[[1,2,3]]",
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert np.allclose(response.json(), linear([[1, 2, 3]]))


def test_json_and_npy_round_trips(serve):
    server = serve(EXAMPLE, "--workers", "1")
    rows = np.random.default_rng(1).normal(size=(50, 3))
    response = requests.post(server.url(), json=rows.tolist())
    assert np.allclose(response.json(), linear(rows))

    response = requests.post(server.url(), data=npy_bytes(rows.astype(np.float32)),
                             headers={"Content-Type": "application/x-npy",
                                      "Accept": "application/x-npy"})
    assert response.headers["Content-Type"] == "application/x-npy"
    assert np.allclose(np.load(io.BytesIO(response.content), allow_pickle=False), linear(rows),
                       atol=1e-5)

    # Mixed: JSON in, NPY out, with charset on the request and an Accept list.
    response = requests.post(server.url(), data=b"[[1, 2, 3]]",
                             headers={"Content-Type": "application/json; charset=utf-8",
                                      "Accept": "text/html, application/x-npy"})
    assert response.headers["Content-Type"] == "application/x-npy"


def test_chunked_uploads(serve):
    server = serve(EXAMPLE, "--workers", "1")
    rows = np.random.default_rng(2).normal(size=(2000, 3))

    def chunks(data: bytes, size: int = 4096):
        for start in range(0, len(data), size):
            yield data[start:start + size]

    body = npy_bytes(rows)
    response = requests.post(server.url(), data=chunks(body),
                             headers={"Content-Type": "application/x-npy",
                                      "Accept": "application/x-npy"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 200
    assert np.allclose(np.load(io.BytesIO(response.content)), linear(rows))

    response = requests.post(server.url(), data=chunks(b"[[1, 2, 3]]", 3),
                             headers={"Content-Type": "application/json"})
    assert np.allclose(response.json(), linear([[1, 2, 3]]))


def test_endpoints_route_and_execution_parameters(serve):
    server = serve(EXAMPLE, "--workers", "2", "--max-payload-mb", "100")
    response = requests.post(server.url("/endpoints/my-endpoint/invocations"), json=[[1, 2, 3]])
    assert response.status_code == 200 and np.allclose(response.json(), linear([[1, 2, 3]]))
    assert requests.get(server.url("/execution-parameters")).json() == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 100}


# -- errors ----------------------------------------------------------------------


def test_error_answers_are_json(serve, toolbox):
    server = serve(toolbox, "--workers", "1", "--max-payload-mb", "1")

    def check(response, status, says):
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["code"] == status and says in body["message"], body
        return body

    check(requests.get(server.url("/nothing-here")), 404, "no route GET /nothing-here")
    check(requests.get(server.url("/invocations")), 405, "GET is not allowed")
    check(requests.delete(server.url("/ping")), 405, "DELETE is not allowed")
    body = check(requests.post(server.url(), json=[1], headers={"Accept": "text/html"}), 406,
                 "text/html")
    assert "application/json" in body["supported"]
    body = check(requests.post(server.url(), data=b"a,b", headers={"Content-Type": "text/x-y"}),
                 415, "text/x-y")
    assert "application/x-npy" in body["supported"]
    check(requests.post(server.url(), data=b'{"a": ', headers={"Content-Type": "application/json"}),
          400, "not valid JSON")
    check(requests.post(server.url(), data=npy_bytes(np.array([None, 1], dtype=object)),
                        headers={"Content-Type": "application/x-npy"}), 400, "pickles are refused")
    big = b"[" + b"1," * (1 << 20) + b"1]"
    check(requests.post(server.url(), data=big), 413, "over the limit of 1048576 bytes")
    check(requests.post(server.url(), data=iter([big[:1 << 20], big[1 << 20:]])), 413,
          "over the limit")
    check(requests.post(server.url(), json={"fail": "weights are NaN"}), 500,
          "predict_fn raised RuntimeError")
    # The exception's own text stays in the log, out of the answer.
    assert "NaN" not in requests.post(server.url(), json={"fail": "weights are NaN"}).text
    check(requests.post(server.url(), json={"reject": "no text field"}), 422, "no text field")

    # Nothing above broke the worker: it still answers, and the 500 left its traceback.
    assert requests.post(server.url(), json=[1, 2]).json() == [2, 4]
    assert "Traceback" in server.log and "RuntimeError: weights are NaN" in server.log


# -- loading ---------------------------------------------------------------------


def test_preload_calls_model_fn_once_for_two_workers(serve, toolbox):
    server = serve(toolbox, "--workers", "2")
    answers = {tuple(requests.post(server.url(), json={"whoami": 1},
                                   headers={"Connection": "close"}).json().values())
               for _ in range(40)}
    loads = (toolbox / "loads.txt").read_text().split("\n")[:-1]
    assert loads == [f"{server.proc.pid} None"]  # once, in the master
    assert all(pid != server.proc.pid for pid, _ in answers)
    assert {worker for _, worker in answers} <= {0, 1}


def test_connections_opened_at_once_are_spread_over_the_workers(serve, toolbox):
    # A client pool (wrk, a load balancer's) opens its kept-alive connections at once, and
    # they stay where they land. With 32 free threads a worker could take all 8 before the
    # other woke: one core serving everything. Each round uses a fresh set of 8.
    server = serve(toolbox, "--workers", "2", "--threads", "32")
    seen: set[int] = set()
    deadline = time.monotonic() + 30  # both workers up (the second forks after the first)
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.add(requests.post(server.url(), json={"whoami": 1},
                               headers={"Connection": "close"}).json()["pid"])
    assert len(seen) == 2, server.log
    for round_ in range(3):
        connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                       for _ in range(8)]
        for connection in connections:
            connection.connect()
        held: dict[int, int] = {}
        for connection in connections:
            connection.request("POST", "/invocations", body=b'{"whoami": 1}',
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            pid = json.loads(answer.read())["pid"]
            held[pid] = held.get(pid, 0) + 1
        for connection in connections:
            connection.close()
        # Even, but for two workers accepting in the same instant.
        assert sorted(held.values()) in ([4, 4], [3, 5]), (round_, held)
        time.sleep(0.2)  # the workers see these closed (their counts go back to 0)


def test_without_preload_each_worker_loads_once(serve, toolbox):
    server = serve(toolbox, "--workers", "2", "--no-preload")
    deadline = time.monotonic() + 30  # ping is 200 once *a* worker is ready; wait for both
    while len((toolbox / "loads.txt").read_text().split("\n")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    loads = sorted(line.split() for line in (toolbox / "loads.txt").read_text().splitlines())
    assert len(loads) == 2
    assert {worker for _, worker in loads} == {"0", "1"}
    assert len({pid for pid, _ in loads}) == 2 and str(server.proc.pid) not in dict(loads)


def test_loading_workers_take_no_traffic(serve, toolbox):
    (toolbox / "load_delay.txt").write_text("3")
    server = serve(toolbox, "--workers", "1", "--no-preload", "--timeout", "1", ready=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the master listens before the worker has loaded
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    # A request sent while the worker loads waits in the backlog: answered once the model
    # is loaded, never with a 503.
    sent = time.monotonic()
    answer = requests.post(server.url(), json=[1], timeout=30)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - sent > 1.0
    assert requests.get(server.url("/ping"), timeout=5).status_code == 200
    # The load took 3 s with a 1 s worker timeout: the worker was not killed for it.
    assert "WORKER TIMEOUT" not in server.log
    assert (toolbox / "loads.txt").read_text().count("\n") == 1


def test_preload_listens_only_once_the_model_is_loaded(serve, toolbox):
    (toolbox / "load_delay.txt").write_text("2")
    server = serve(toolbox, "--workers", "1", ready=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = requests.get(server.url("/ping"), timeout=2).status_code
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        # The first answer of any kind comes after model_fn returned, and it is 200.
        assert status == 200 and (toolbox / "loads.txt").exists()
        break
    else:
        raise AssertionError(server.log)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(serve, toolbox):
    server = serve(toolbox, "--workers", "1")
    result = {}

    def slow_request():
        result["response"] = requests.post(server.url(), json={"sleep": 2}, timeout=30)

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 10
    while not (toolbox / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (toolbox / "started").exists()
    server.proc.terminate()
    time.sleep(0.3)
    with pytest.raises(requests.ConnectionError):  # no new requests once stopping
        requests.post(server.url(), json=[1], timeout=10)
    thread.join(30)
    assert result["response"].status_code == 200
    assert result["response"].json() == {"slept": 2}
    assert server.proc.wait(30) == 0


def test_access_log_has_one_line_per_request_and_no_ping(serve, toolbox):
    server = serve(toolbox, "--workers", "1")
    for _ in range(3):
        requests.get(server.url("/ping"))
    requests.post(server.url(), json=[1])
    requests.post(server.url(), data=b"{", headers={"Content-Type": "application/json"})
    time.sleep(0.2)
    access = [line for line in server.log.splitlines() if "serving.access" in line]
    assert len(access) == 2, access
    assert '"POST /invocations" 200' in access[0] and access[0].endswith("ms")
    assert '"POST /invocations" 400' in access[1]


def test_ping_is_logged_at_debug(serve, toolbox):
    server = serve(toolbox, "--workers", "1", env={"SAGEMAKER_CONTAINER_LOG_LEVEL": "10"})
    requests.get(server.url("/ping"))
    time.sleep(0.2)
    assert '"GET /ping" 200' in server.log


# -- user code -------------------------------------------------------------------


def test_program_from_a_tarball_submit_directory_with_sibling_modules(serve, tmp_path):
    code = tmp_path / "src"
    code.mkdir()
    (code / "helpers.py").write_text("def triple(x):\n    return x * 3\n")
    (code / "entry.py").write_text(
        "from helpers import triple\n"
        "def model_fn(model_dir):\n    return triple\n"
    )
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(code, arcname=".")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    server = serve(model_dir, "--workers", "1",
                   env={"SAGEMAKER_PROGRAM": "entry.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(archive)})
    assert requests.post(server.url(), json=[1, 2]).json() == [3, 6]


def test_requirements_are_installed_before_workers_start(serve, tmp_path):
    name = "serving_toolkit_reqtest"
    model_dir = write_model_dir(tmp_path, f"""
        import {name}
        def model_fn(model_dir):
            return lambda x: {name}.ANSWER
    """)
    wheel = write_wheel(model_dir / "code", name, {f"{name}.py": "ANSWER = 42\n"})
    (model_dir / "code" / "requirements.txt").write_text(f"./{wheel.name}\n")
    try:
        server = serve(model_dir, "--workers", "1")
        assert requests.post(server.url(), json=[1]).json() == 42
    finally:
        pip_uninstall(name)


def test_requirements_switch_off(tmp_path):
    model_dir = write_model_dir(tmp_path, "import not_installed_anywhere\n")
    (model_dir / "code" / "requirements.txt").write_text("./nowhere-0.1-py3-none-any.whl\n")
    result = run_serve("--model-dir", str(model_dir), "--no-install-requirements")
    # pip was not run: the import of the missing module is what failed.
    assert result.returncode == 1
    assert "No module named 'not_installed_anywhere'" in result.stderr
    assert "pip install" not in result.stderr


def test_failed_requirements_install_stops_startup_with_pips_message(tmp_path):
    model_dir = write_model_dir(tmp_path, "def model_fn(model_dir):\n    return abs\n")
    (model_dir / "code" / "requirements.txt").write_text("./nowhere-0.1-py3-none-any.whl\n")
    result = run_serve("--model-dir", str(model_dir), "--port", "1")
    assert result.returncode == 1
    assert "pip install -r" in result.stderr and "failed" in result.stderr
    assert "nowhere-0.1-py3-none-any.whl" in result.stderr  # pip's own words


# -- start-up errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args, env, says",
    [
        ([], {"SAGEMAKER_BIND_TO_PORT": "abc"}, "invalid SAGEMAKER_BIND_TO_PORT='abc'"),
        (["--workers", "0"], {}, "invalid --workers='0': must be 1 or more"),
        ([], {"SM_MODEL_DIR": "/no/such/dir"}, "model directory /no/such/dir does not exist"),
    ],
)
def test_bad_settings_stop_startup_with_one_line(args, env, says):
    if "SM_MODEL_DIR" not in env:
        args = ["--model-dir", str(EXAMPLE), *args]
    result = run_serve(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert says in result.stderr and "Traceback" not in result.stderr


def test_help_names_every_variable():
    result = run_serve("--help")
    assert result.returncode == 0
    for variable in ("SM_MODEL_DIR", "SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_MODEL_SERVER_WORKERS",
                     "SAGEMAKER_MODEL_SERVER_TIMEOUT", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
                     "SAGEMAKER_MAX_PAYLOAD_IN_MB", "SAGEMAKER_CONTAINER_LOG_LEVEL",
                     "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY"):
        assert variable in result.stdout


def test_bad_hosting_functions_stop_startup(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        def transform_fn(model, data, content_type, accept):
            return data
        def predict_fn(data, model):
            return data
    """)
    result = run_serve("--model-dir", str(model_dir))
    assert result.returncode == 1
    assert "cannot be defined with predict_fn" in result.stderr


def test_failing_model_fn_stops_startup_with_its_traceback(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        def model_fn(model_dir):
            raise FileNotFoundError("model.pt is missing")
    """)
    result = run_serve("--model-dir", str(model_dir))
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "loading the model failed: FileNotFoundError: model.pt is missing" in result.stderr


def test_failing_model_fn_in_a_worker_stops_the_server(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        def model_fn(model_dir):
            raise FileNotFoundError("model.pt is missing")
    """)
    result = run_serve("--model-dir", str(model_dir), "--no-preload", "--workers", "1",
                       "--port", str(free_port()))
    assert result.returncode != 0
    assert "model.pt is missing" in result.stderr and "Worker failed to boot" in result.stderr


def test_boto3_sagemaker_runtime_client_pointed_at_the_container(serve):
    import boto3
    import botocore.exceptions

    server = serve(EXAMPLE, "--workers", "1")
    client = boto3.client(
        "sagemaker-runtime", endpoint_url=server.url(""), region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )
    answer = client.invoke_endpoint(EndpointName="my-endpoint", Body=b"[[1, 2, 3]]",
                                    ContentType="application/json", Accept="application/json")
    assert answer["ContentType"] == "application/json"
    assert np.allclose(json.loads(answer["Body"].read()), linear([[1, 2, 3]]))

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.invoke_endpoint(EndpointName="my-endpoint", Body=b"1,2,3", ContentType="text/x-y")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 415


def test_program_name_finds_the_model_code_directory(serve, tmp_path):
    # SAGEMAKER_PROGRAM alone, default submit directory absent: <model_dir>/code is used.
    model_dir = write_model_dir(tmp_path, "raise RuntimeError('the wrong script')\n", {
        "code/other.py": "def model_fn(model_dir):\n    return lambda x: x + 1\n"})
    server = serve(model_dir, "--workers", "1", env={"SAGEMAKER_PROGRAM": "other.py"})
    assert requests.post(server.url(), json=[1]).json() == [2]


def test_missing_program_stops_startup(tmp_path):
    model_dir = write_model_dir(tmp_path, "def model_fn(model_dir):\n    return abs\n")
    result = run_serve("--model-dir", str(model_dir), env={"SAGEMAKER_PROGRAM": "absent.py"})
    assert result.returncode == 1
    assert "user program absent.py (SAGEMAKER_PROGRAM) is not in" in result.stderr
