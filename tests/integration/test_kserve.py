"""KServe's protocols on a real server: v2 (the Open Inference Protocol) through NVIDIA's
tritonclient, JSON and binary tensors; v1 by hand; v1 and v2 through KServe's own REST client
(from its own environment, .venv-kserve); errors as the protocols define them;
our hosting functions and a TorchServe archive's handler alike."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server_helpers import REPO, write_model_dir

KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_CLIENT = REPO / "tests" / "clients" / "kserve_client.py"

INFERENCE = '''
import numpy as np
from serving import ClientError


def model_fn(model_dir):
    return 2


def predict_fn(data, model):
    if isinstance(data, dict):  # several inputs: an NPZ body, by name
        return {"sum": data["a"] + data["b"], "product": data["a"] * data["b"]}
    if data.dtype.kind == "S":
        return np.char.upper(data)
    if data.dtype == np.int8:
        raise ClientError("no int8 here", status_code=422)
    if data.dtype == np.int16:
        raise RuntimeError("the model broke")
    return data * model
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.server_helpers import Server

    model = write_model_dir(tmp_path_factory.mktemp("model"), INFERENCE)
    server = Server(model, "--workers", "1",
                    log_path=tmp_path_factory.mktemp("log") / "serve.log")
    server.wait_ready()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}")


def tensor(name, array, datatype, binary):
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("dtype, datatype", [(np.float32, "FP32"), (np.float64, "FP64"),
                                             (np.int64, "INT64"), (np.uint8, "UINT8"),
                                             (np.float16, "FP16"), (np.int32, "INT32")])
def test_v2_infer_typed_tensors(client, binary, dtype, datatype):
    x = (np.arange(6).reshape(2, 3) + 1).astype(dtype)
    answer = client.infer("default", [tensor("x", x, datatype, binary)],
                          outputs=[triton.InferRequestedOutput("output-0", binary_data=binary)])
    got = answer.as_numpy("output-0")
    assert got.dtype == dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, x * 2)
    assert answer.get_response()["model_name"] == "default"


@pytest.mark.parametrize("binary", [False, True])
def test_v2_bytes_tensors(client, binary):
    words = np.array([b"alpha", b"beta", b"g"], dtype=object)
    answer = client.infer("default", [tensor("words", words, "BYTES", binary)],
                          outputs=[triton.InferRequestedOutput("output-0", binary_data=binary)])
    assert [bytes(w) if not isinstance(w, str) else w.encode()
            for w in answer.as_numpy("output-0")] == [b"ALPHA", b"BETA", b"G"]


def test_v2_several_inputs_and_outputs_by_name(client):
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = np.array([[3.0, 4.0]], dtype=np.float32)
    answer = client.infer("default", [tensor("a", a, "FP32", True), tensor("b", b, "FP32", False)],
                          request_id="req-7")
    np.testing.assert_array_equal(answer.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(answer.as_numpy("product"), a * b)
    assert answer.get_response()["id"] == "req-7"
    only = client.infer("default", [tensor("a", a, "FP32", False), tensor("b", b, "FP32", False)],
                        outputs=[triton.InferRequestedOutput("product", binary_data=True)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["product"]
    with pytest.raises(InferenceServerException, match="no output named 'nope'"):
        client.infer("default", [tensor("a", a, "FP32", False), tensor("b", b, "FP32", False)],
                     outputs=[triton.InferRequestedOutput("nope")])


def test_v2_health_and_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("default") and not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("default")["name"] == "default"
    missing = requests.get(server.url("/v2/models/nope"), timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "model nope is not loaded"}


def infer(server, body, headers=None, path="/v2/models/default/infer"):
    headers = headers or {"Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url(path), data=data, headers=headers, timeout=10)


@pytest.mark.parametrize("inputs, why", [
    ([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}],
     "shape [2, 2] holds 4 elements, the data 3"),
    ([{"name": "x", "shape": [3], "datatype": "FP128", "data": [1, 2, 3]}],
     "datatype 'FP128' is not one of"),
    ([{"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}],
     "INT32 data must be numbers"),
    ([{"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}],
     "BOOL data must be booleans"),
    ([{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}], "shape must be a list"),
    ([{"name": "x", "shape": [1], "datatype": "FP32"}], "no data"),
    ([{"shape": [1], "datatype": "FP32", "data": [1]}], "name must be"),
    ([], '"inputs": a list of tensors'),
])
def test_v2_requests_that_do_not_fit_are_400s(server, inputs, why):
    answer = infer(server, {"inputs": inputs})
    assert answer.status_code == 400
    assert why in answer.json()["error"] and set(answer.json()) == {"error"}


def test_v2_binary_data_that_does_not_fit(server):
    head = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    ok = infer(server, head + struct.pack("<2f", 1, 2),
               {"Inference-Header-Content-Length": str(len(head))})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2.0, 4.0]
    for body, length, why in (
            (head + b"\0" * 4, len(head), "is more than the 4 bytes"),
            (head + b"\0" * 12, len(head), "4 bytes of binary data no input claims"),
            (head + b"\0" * 8, len(head) + 100, "is not a length within"),
            (head[:-3] + b"\0" * 8, len(head) - 3, "not valid JSON")):
        answer = infer(server, body, {"Inference-Header-Content-Length": str(length)})
        assert answer.status_code == 400 and why in answer.json()["error"], answer.text
    wrong = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 8}}]}).encode()
    answer = infer(server, wrong + b"\0" * 8, {"Inference-Header-Content-Length": str(len(wrong))})
    assert answer.status_code == 400 and "takes 12 bytes, not 8" in answer.json()["error"]


def test_v2_model_errors_keep_their_status(server):
    chosen = infer(server, {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8",
                                        "data": [1]}]})
    assert chosen.status_code == 422 and chosen.json() == {"error": "no int8 here"}
    broken = infer(server, {"inputs": [{"name": "x", "shape": [1], "datatype": "INT16",
                                        "data": [1]}]})
    assert broken.status_code == 500 and "RuntimeError" in broken.json()["error"]
    assert "the model broke" not in broken.text  # no exception text without debug errors
    unknown = infer(server, {"inputs": []}, path="/v2/models/default/versions/3/infer")
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_v1_predict_and_models(server):
    answer = requests.post(server.url("/v1/models/default:predict"),
                           json={"instances": [[1, 2], [3, 4]]}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"predictions": [[2, 4], [6, 8]]}
    assert requests.get(server.url("/v1/models"), timeout=10).json() == {"models": ["default"]}
    assert requests.get(server.url("/v1/models/default"), timeout=10).json() == \
        {"name": "default", "ready": True}
    for body, status in (({"rows": []}, 400), (b"{", 400)):
        bad = requests.post(server.url("/v1/models/default:predict"),
                            data=body if isinstance(body, bytes) else json.dumps(body),
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == status and set(bad.json()) == {"error"}
    missing = requests.post(server.url("/v1/models/nope:predict"), json={"instances": []},
                            timeout=10)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_kserve_rest_client_v1_and_v2(server):
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: run `make install`"
    result = subprocess.run([str(KSERVE_PYTHON), str(KSERVE_CLIENT), server.url(""), "default"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    v2, v1 = out["v2"], out["v1"]
    assert (v2["live"], v2["ready"], v2["model_ready"], v2["unknown_ready"]) == \
        (True, True, True, False)
    doubled = [[3.0, 4.0, 6.0], [8.0, 10.0, 12.0]]
    for kind in ("json", "binary"):
        assert v2[kind]["id"] == "r-1" and v2[kind]["model_name"] == "default"
        assert v2[kind]["outputs"] == {"output-0": {"datatype": "FP32", "shape": [2, 3],
                                                    "data": doubled}}, kind
    assert v2["int64"] == {"output-0": {"datatype": "INT64", "shape": [2, 2],
                                        "data": [[0, 2], [4, 6]]}}
    assert v2["bad_shape"]["status"] == 400
    assert "shape [2, 2] holds 4 elements, the data 3" in v2["bad_shape"]["message"]
    assert v1["live"] is True and v1["model_ready"] is True
    assert v1["predict"] == {"predictions": [[2, 4], [6, 8]]}
    assert v1["unknown"]["status"] == 404
    assert "model no-such-model is not loaded" in v1["unknown"]["message"]


# -- a TorchServe archive's handler -----------------------------------------------------

KSERVE_HANDLER = b'''
def handle(data, context):
    if data is None:
        return None
    if data and isinstance(data[0], dict) and "datatype" in data[0]:  # v2: an item per input
        return [[x * 10 for x in _flat(item["data"])] for item in data]
    return [{"seen": instance} for instance in data]  # v1: the instances


def _flat(value):
    if isinstance(value, list):
        for item in value:
            yield from _flat(item)
    else:
        yield value
'''


@pytest.mark.torchserve
def test_a_torchserve_handler_behind_kserve(serve, tmp_path):
    from tests.torchserve.archives import write_archive

    mar = write_archive(tmp_path / "k.mar", "k", {"k.py": KSERVE_HANDLER}, version="4",
                        handler="k.py")
    server = serve(mar, env={"TMPDIR": str(tmp_path)})
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = np.array([[1, 2], [3, 4]], dtype=np.int64)
    answer = client.infer("k", [tensor("x", x, "INT64", True)])
    # As TorchServe's v2 envelope answers: named after the input, flattened.
    np.testing.assert_array_equal(answer.as_numpy("x"), [10, 20, 30, 40])
    assert answer.get_response()["model_version"] == "4"
    v1 = requests.post(server.url("/v1/models/k:predict"), json={"instances": [1, "two"]},
                       timeout=10)
    assert v1.json() == {"predictions": [{"seen": 1}, {"seen": "two"}]}
    assert client.get_model_metadata("k", "4")["platform"] == "torchserve"
    # Through the archive's pipeline, as /predictions goes: its predict stage is counted
    # (two KServe calls), and no decode stage (KServe's envelope is the input).
    deadline = time.monotonic() + 10
    while True:  # each worker adds its counts to /metrics a few times a second
        metrics = requests.get(server.url("/metrics"), timeout=10).text
        predicted = re.search(
            r'serving_stage_duration_seconds_count\{stage="predict"\} (\S+)', metrics)
        if predicted and float(predicted.group(1)) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert predicted and float(predicted.group(1)) == 2, metrics[-3000:]
    assert 'serving_stage_duration_seconds_count{stage="decode"}' not in metrics
