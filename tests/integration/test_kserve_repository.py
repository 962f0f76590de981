"""The Open Inference Protocol's model repository extension on a real multi-model ``serve``,
through NVIDIA's clients over REST and gRPC: the index, loading and unloading by name, a load
seen by both workers, the errors; and closed when not asked for."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.server_helpers import Server, free_port, wait_for

INFERENCE = '''
import os
import numpy as np


def model_fn(model_dir):
    return float(open(os.path.join(model_dir, "factor.txt")).read())


def predict_fn(data, model):
    if data.dtype == np.uint16:  # which worker answered
        return np.array([os.getpid()], dtype=np.int64)
    return data * model
'''


def model_at(directory, factor: str) -> None:
    """A model directory of the repository: its code, and the factor it multiplies by."""
    (directory / "code").mkdir(parents=True)
    (directory / "code" / "inference.py").write_text(INFERENCE)
    (directory / "factor.txt").write_text(factor)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    model_at(root / "double", "2")
    model_at(root / "triple", "3")
    grpc_port = free_port()
    server = Server(root, "--multi-model", "--multi-model-root", str(root), "--workers", "2",
                    "--repository-api", "local", "--grpc-port", str(grpc_port),
                    log_path=tmp_path_factory.mktemp("log") / "serve.log")
    server.grpc_port = grpc_port
    server.wait_ready()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def rest(server):
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def over_grpc(server):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    wait_for(lambda: _live(client), 30, "gRPC to answer")
    yield client
    client.close()


def _live(client) -> bool:
    try:
        return client.is_server_live()
    except InferenceServerException:
        return False


def infer(client, module, model, array, datatype="FP32"):
    item = module.InferInput("x", list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return client.infer(model, [item]).as_numpy("output-0")


def states(index):
    return {m["name"]: m.get("state", "") for m in index}


def test_index_load_infer_unload_over_rest(server, rest):
    assert "model_repository" in rest.get_server_metadata()["extensions"]
    assert states(rest.get_model_repository_index()) == {"double": "UNAVAILABLE",
                                                         "triple": "UNAVAILABLE"}
    rest.load_model("double")
    index = rest.get_model_repository_index()
    assert {"name": "double", "version": "1", "state": "READY", "reason": ""} in index
    ready_only = requests.post(server.url("/v2/repository/index"), json={"ready": True},
                               timeout=30).json()
    assert [m["name"] for m in ready_only] == ["double"]
    assert infer(rest, triton_http, "double", np.ones(2, np.float32)).tolist() == [2.0, 2.0]
    rest.load_model("double")  # loaded already: still loaded, no error
    rest.unload_model("double")
    assert states(rest.get_model_repository_index())["double"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as gone:
        infer(rest, triton_http, "double", np.ones(2, np.float32))
    assert gone.value.status() == "404"


def test_a_load_reaches_both_workers(server, rest):
    rest.load_model("triple")
    pids = set()
    for _ in range(200):
        # A new client each time: a new connection, which either worker may take.
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        pids.add(int(infer(client, triton_http, "triple", np.zeros(1, np.uint16),
                           "UINT16")[0]))
        client.close()
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only worker(s) {pids} served the loaded model"
    rest.unload_model("triple")


def test_index_load_infer_unload_over_grpc(over_grpc):
    index = over_grpc.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == {"double", "triple"}
    over_grpc.load_model("triple")
    assert infer(over_grpc, triton_grpc, "triple", np.ones(1, np.float32)).tolist() == [3.0]
    ready = over_grpc.get_model_repository_index(as_json=True)["models"]
    assert {"name": "triple", "version": "1", "state": "READY"} in ready
    over_grpc.unload_model("triple")
    with pytest.raises(InferenceServerException) as gone:
        infer(over_grpc, triton_grpc, "triple", np.ones(1, np.float32))
    assert gone.value.status() == "StatusCode.NOT_FOUND"


def test_what_is_not_in_the_repository(server, rest, over_grpc):
    missing = requests.post(server.url("/v2/repository/models/nope/load"), timeout=30)
    assert missing.status_code == 404 and "has no model nope" in missing.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        over_grpc.load_model("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    bad = requests.post(server.url("/v2/repository/models/..hidden/load"), timeout=30)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    not_loaded = requests.post(server.url("/v2/repository/models/double/unload"), timeout=30)
    assert not_loaded.status_code == 404
    body = requests.post(server.url("/v2/repository/index"), data=b'{"ready": "yes"}',
                         timeout=30)
    assert body.status_code == 400


def test_closed_unless_asked_for(tmp_path):
    """Off by default: both transports refuse (403 / PERMISSION_DENIED), naming the setting,
    and nothing is loaded."""
    root = tmp_path / "root"
    model_at(root / "one", "2")
    grpc_port = free_port()
    server = Server(root, "--multi-model", "--multi-model-root", str(root), "--workers", "1",
                    "--grpc-port", str(grpc_port), log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        refused = requests.post(server.url("/v2/repository/models/one/load"), timeout=30)
        assert refused.status_code == 403 and "--repository-api" in refused.json()["error"]
        assert requests.post(server.url("/v2/repository/index"), timeout=30).status_code == 403
        assert "model_repository" not in requests.get(server.url("/v2"), timeout=30) \
            .json()["extensions"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            wait_for(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live, 30,
                     "gRPC to answer")
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="one"),
                                         timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert requests.get(server.url("/models"), timeout=30).json()["models"] == []
    finally:
        server.terminate()
