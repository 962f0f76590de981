"""The Open Inference Protocol over gRPC on a real ``serve --grpc-port``: NVIDIA's
``tritonclient.grpc`` (raw contents), the protocol's own stubs with typed contents, KServe's
``InferenceGRPCClient`` (from .venv-kserve); every datatype, BYTES, several inputs and outputs,
the errors and their gRPC status, REST and gRPC answering alike, both workers serving; and a
model that declares its tensors (``model-settings.json``), checked on both transports."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.server_helpers import REPO, Server, free_port, wait_for, write_model_dir

KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_GRPC_CLIENT = REPO / "tests" / "clients" / "kserve_grpc_client.py"

INFERENCE = '''
import os
import time
import numpy as np
from serving import ClientError


def model_fn(model_dir):
    return 2


def predict_fn(data, model):
    if isinstance(data, dict):  # several inputs: an NPZ body, by name
        return {"sum": data["a"] + data["b"], "product": data["a"] * data["b"]}
    if data.dtype.kind == "S":
        return np.char.upper(data)
    if data.dtype == np.bool_:
        return ~data
    if data.dtype == np.int8:
        raise ClientError("no int8 here", status_code=422)
    if data.dtype == np.int16:
        raise RuntimeError("the model broke")
    if data.dtype == np.uint16:  # which worker answered
        return np.array([os.getpid()], dtype=np.int64)
    if data.dtype == np.uint32:  # slow: past a short client deadline
        time.sleep(float(data.ravel()[0]) / 1000)
    return data * model
'''

SIGNATURE = {"implementation": "ignored here", "inputs": [
    {"name": "pixels", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = write_model_dir(tmp_path_factory.mktemp("model"), INFERENCE)
    grpc_port = free_port()
    server = Server(model, "--workers", "2", "--grpc-port", str(grpc_port),
                    "--max-payload-mb", "1", "--max-decoded-mb", "0.25",
                    log_path=tmp_path_factory.mktemp("log") / "serve.log")
    server.grpc_port = grpc_port
    server.wait_ready()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    wait_for(lambda: _live(client), 30, "gRPC to answer")
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server, client):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _live(client) -> bool:
    try:
        return client.is_server_live()
    except InferenceServerException:
        return False


def tensor(name, array, datatype):
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("default") and client.is_model_ready("default", "1")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "serving-toolkit" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("default", as_json=True)
    assert model["name"] == "default" and model["versions"] == ["1"]
    assert model["platform"] == "python" and "inputs" not in model  # none declared


@pytest.mark.parametrize("dtype, datatype", [
    (np.float32, "FP32"), (np.float64, "FP64"), (np.float16, "FP16"), (np.int32, "INT32"),
    (np.int64, "INT64"), (np.uint8, "UINT8"), (np.uint64, "UINT64")])
def test_infer_raw_contents_every_datatype(client, dtype, datatype):
    x = (np.arange(6).reshape(2, 3) + 1).astype(dtype)
    answer = client.infer("default", [tensor("x", x, datatype)])
    got = answer.as_numpy("output-0")
    assert got.dtype == dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, x * 2)
    assert answer.get_response().model_version == "1"


def test_infer_bool_and_bytes_raw(client):
    flags = np.array([[True, False, True]])
    np.testing.assert_array_equal(
        client.infer("default", [tensor("x", flags, "BOOL")]).as_numpy("output-0"), ~flags)
    words = np.array([b"ab", b"", b"xyz"], dtype=object)
    got = client.infer("default", [tensor("x", words, "BYTES")]).as_numpy("output-0")
    assert list(got) == [b"AB", b"", b"XYZ"]


def test_several_inputs_and_outputs_and_the_ones_asked_for(client):
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 4.0], dtype=np.float32)
    answer = client.infer("default", [tensor("a", a, "FP32"), tensor("b", b, "FP32")])
    np.testing.assert_array_equal(answer.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(answer.as_numpy("product"), a * b)
    only = client.infer("default", [tensor("a", a, "FP32"), tensor("b", b, "FP32")],
                        outputs=[triton.InferRequestedOutput("product")])
    assert [o.name for o in only.get_response().outputs] == ["product"]


def _typed(name, datatype, shape, **contents):
    item = pb.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(item.contents, field).extend(values)
    return item


@pytest.mark.parametrize("datatype, field, values, want", [
    ("FP32", "fp32_contents", [1.5, 2.0, 3.0], [3.0, 4.0, 6.0]),
    ("FP64", "fp64_contents", [1.5, 2.0, 3.0], [3.0, 4.0, 6.0]),
    ("INT32", "int_contents", [1, -2, 3], [2, -4, 6]),
    ("INT64", "int64_contents", [1, -2, 2**40], [2, -4, 2**41]),
    ("UINT8", "uint_contents", [1, 2, 100], [2, 4, 200]),
    ("UINT64", "uint64_contents", [1, 2, 3], [2, 4, 6]),
    ("BOOL", "bool_contents", [True, False, True], [False, True, False]),
    ("BYTES", "bytes_contents", [b"ab", b"c", b""], [b"AB", b"C", b""]),
])
def test_infer_typed_contents_answers_typed(stub, datatype, field, values, want):
    request = pb.ModelInferRequest(model_name="default", id="typed-1",
                                   inputs=[_typed("x", datatype, [3], **{field: values})])
    response = stub.ModelInfer(request)
    assert response.id == "typed-1" and response.model_name == "default"
    assert not response.raw_output_contents  # typed in, typed out
    (output,) = response.outputs
    assert output.datatype == datatype and list(output.shape) == [3]
    assert list(getattr(output.contents, field)) == want


def _code(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_errors_take_kserves_grpc_status(stub, client):
    def infer(*inputs, raw=(), name="default", version=""):
        return lambda: stub.ModelInfer(pb.ModelInferRequest(
            model_name=name, model_version=version, inputs=list(inputs),
            raw_input_contents=list(raw)))

    fp32 = _typed("x", "FP32", [3], fp32_contents=[1, 2, 3])
    assert _code(infer(fp32, name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(infer(fp32, version="7"))[0] == grpc.StatusCode.NOT_FOUND
    code, details = _code(infer(_typed("x", "FP32", [2, 2], fp32_contents=[1, 2, 3])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds 4 elements" in details
    code, details = _code(infer(_typed("x", "FP16", [1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in details
    code, _ = _code(infer(_typed("x", "FP32", [1]), _typed("y", "FP32", [1]), raw=[b"\0" * 4]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = _code(infer(_typed("x", "UINT8", [1], uint_contents=[300])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "UINT8 holds 0 to 255" in details
    code, details = _code(infer(_typed("x", "INT8", [1], int_contents=[1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no int8 here" in details
    code, details = _code(infer(_typed("x", "INT16", [1], int_contents=[1])))
    assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details
    # Past --max-payload-mb (1 MiB): grpcio refuses the message itself.
    big = np.zeros(300_000, dtype=np.float32)
    code, _ = _code(infer(_typed("x", "FP32", [big.size]), raw=[big.tobytes()]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Typed contents that would decode past --max-decoded-mb (0.25 MiB here): refused
    # before they are read, though the message is under --max-payload-mb.
    many = _typed("x", "BOOL", [20_000], bool_contents=[True] * 20_000)
    code, details = _code(infer(many))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "typed contents" in details
    # Still serving, the errors' bodies beside it unharmed.
    assert client.infer("default", [tensor("x", np.ones(2, np.float32), "FP32")]) \
        .as_numpy("output-0").tolist() == [2.0, 2.0]


def test_the_clients_deadline_is_the_invocations(stub):
    slow = _typed("x", "UINT32", [1], uint_contents=[3000])  # the model sleeps 3 s
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="default", inputs=[slow]), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


def test_rest_and_grpc_answer_alike(server, client):
    x = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    over_grpc = client.infer("default", [tensor("x", x, "FP32")])
    over_rest = requests.post(server.url("/v2/models/default/versions/1/infer"), json={
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                    "data": x.ravel().tolist()}]}, timeout=30).json()
    (output,) = over_rest["outputs"]
    assert over_rest["model_version"] == "1"
    assert output["datatype"] == "FP32" and output["shape"] == [1, 3]
    np.testing.assert_array_equal(over_grpc.as_numpy("output-0").ravel(), output["data"])


def test_versioned_rest_paths_for_a_model_that_is_not_an_archive(server):
    metadata = requests.get(server.url("/v2/models/default/versions/1"), timeout=30)
    assert metadata.status_code == 200 and metadata.json()["versions"] == ["1"]
    assert requests.get(server.url("/v2/models/default/versions/1/ready"),
                        timeout=30).status_code == 200
    wrong = requests.post(server.url("/v2/models/default/versions/2/infer"), json={
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, timeout=30)
    assert wrong.status_code == 404 and "no version 2" in wrong.json()["error"]


def test_both_workers_serve_grpc(server):
    pids = set()
    pid_input = _typed("x", "UINT16", [1], uint_contents=[0])
    for _ in range(200):
        # A new channel each time: a new connection, which the kernel may give to either
        # worker's listener (SO_REUSEPORT).
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name="default", inputs=[pid_input]), timeout=30)
        pids.add(response.outputs[0].contents.int64_contents[0])
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only worker(s) {pids} answered gRPC"


def test_grpc_calls_are_counted_and_logged(server, client):
    client.infer("default", [tensor("x", np.ones(1, np.float32), "FP32")])
    metrics = requests.get(server.url("/metrics"), timeout=30).text
    assert 'route="/inference.GRPCInferenceService/ModelInfer"' in metrics
    wait_for(lambda: '"GRPC /inference.GRPCInferenceService/ModelInfer" OK' in server.log,
             10, "the access line")


def test_kserves_own_grpc_client(server, client):
    out = subprocess.run([str(KSERVE_PYTHON), str(KSERVE_GRPC_CLIENT),
                          f"127.0.0.1:{server.grpc_port}", "default"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["metadata"]["name"] == "default" and got["metadata"]["versions"] == ["1"]
    assert got["fp32"] == {"datatype": "FP32", "shape": [2, 3],
                           "data": [[3.0, 4.0, 6.0], [8.0, 10.0, 12.0]]}
    assert got["int64"]["data"] == [[0, 2], [4, 6]]
    assert got["bytes"]["data"] == ["AB", "C"]
    assert got["unknown"].startswith("NOT_FOUND")


# -- a model that declares its tensors -------------------------------------------------


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    model = write_model_dir(tmp_path_factory.mktemp("declared"), INFERENCE,
                            {"model-settings.json": json.dumps(SIGNATURE)})
    grpc_port = free_port()
    server = Server(model, "--workers", "1", "--grpc-port", str(grpc_port),
                    log_path=tmp_path_factory.mktemp("log") / "serve.log")
    server.grpc_port = grpc_port
    server.wait_ready()
    yield server
    server.terminate()


def test_declared_tensors_in_the_metadata_of_both_transports(declared):
    want = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3]}]
    rest = requests.get(declared.url("/v2/models/default"), timeout=30).json()
    assert rest["inputs"] == want and rest["outputs"][0]["name"] == "output-0"
    client = triton.InferenceServerClient(f"127.0.0.1:{declared.grpc_port}")
    wait_for(lambda: _live(client), 30, "gRPC to answer")
    over_grpc = client.get_model_metadata("default", as_json=True)
    assert over_grpc["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "3"]}]
    client.close()


@pytest.mark.parametrize("spec, error", [
    ({"name": "image", "datatype": "FP32", "shape": [1, 3]}, "no input named 'image'"),
    ({"name": "pixels", "datatype": "FP64", "shape": [1, 3]}, "the model takes FP32"),
    ({"name": "pixels", "datatype": "FP32", "shape": [1, 4]}, "the model takes [-1, 3]"),
])
def test_requests_are_checked_against_declared_tensors(declared, spec, error):
    count = int(np.prod(spec["shape"]))
    rest = requests.post(declared.url("/v2/models/default/infer"), json={
        "inputs": [{**spec, "data": [1.0] * count}]}, timeout=30)
    assert rest.status_code == 400 and error in rest.json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{declared.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        field = "fp64_contents" if spec["datatype"] == "FP64" else "fp32_contents"
        code, details = _code(lambda: stub.ModelInfer(pb.ModelInferRequest(
            model_name="default", inputs=[_typed(spec["name"], spec["datatype"], spec["shape"],
                                                 **{field: [1.0] * count})]), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and error in details
    fits = requests.post(declared.url("/v2/models/default/infer"), json={
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 3],
                    "data": [1.0] * 6}]}, timeout=30)
    assert fits.status_code == 200 and fits.json()["outputs"][0]["data"] == [2.0] * 6


def test_sigterm_lets_a_grpc_call_in_flight_finish(tmp_path):
    model = write_model_dir(tmp_path, INFERENCE)
    grpc_port = free_port()
    server = Server(model, "--workers", "1", "--grpc-port", str(grpc_port),
                    log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            wait_for(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live, 30,
                     "gRPC to answer")
            slow = _typed("x", "UINT32", [1], uint_contents=[1500])  # 1.5 s in the model
            call = stub.ModelInfer.future(pb.ModelInferRequest(model_name="default",
                                                               inputs=[slow]), timeout=30)
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            response = call.result()
        assert list(response.outputs[0].contents.uint_contents) == [3000]
        assert server.proc.wait(30) == 0
    finally:
        server.terminate()
