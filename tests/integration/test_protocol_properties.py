"""Property tests against a real ``serve``: whatever KServe v2 body (JSON, or JSON with
binary tensors) or TorchServe ``/predictions`` body a client sends, the answer is below
500 (a 4xx with the protocol's error body when the request is at fault) and the worker
lives to answer the next request. Bodies are built from the protocols' own vocabulary
(datatypes, shapes, parameters) with values of every kind where the protocol expects one,
so the search reaches deep into the decoding, not only the JSON parser."""

from __future__ import annotations

import json
import struct

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_helpers import write_model_dir
from tests.torchserve.archives import write_archive

pytestmark = [pytest.mark.torchserve, pytest.mark.pytorch]

MODEL = '''
import numpy as np


def model_fn(model_dir):
    return 2


def predict_fn(data, model):
    if isinstance(data, dict):
        return {name: np.asarray(value) for name, value in data.items()}
    return data
'''

ECHO = (b"def handle(data, context):\n    if data is None:\n        return None\n"
        b"    return [repr(row)[:100] for row in data]\n")

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "BYTES", "FP8", "", None, 3]
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
SIZES = st.integers(min_value=-2, max_value=2**64) | st.sampled_from([0, 1, 2, 3, 2**63])
SHAPES = st.lists(SIZES, max_size=6) | st.lists(st.just(1), min_size=30, max_size=70) | ANY_JSON
PARAMETERS = st.none() | ANY_JSON | st.fixed_dictionaries(
    {}, optional={"binary_data_size": SIZES | ANY_JSON, "binary_data": ANY_JSON})


def tensor(binary: bool):
    fields = {"name": st.sampled_from(["x", "y", "output-0"]) | ANY_JSON,
              "datatype": st.sampled_from(DATATYPES), "shape": SHAPES,
              "parameters": PARAMETERS}
    if not binary:
        fields["data"] = ANY_JSON | st.lists(st.integers(-2**65, 2**65) | st.floats(),
                                             max_size=6)
    return st.fixed_dictionaries({}, optional=fields)


def document(binary: bool):
    return st.fixed_dictionaries({"inputs": st.lists(tensor(binary), max_size=3) | ANY_JSON},
                                 optional={"outputs": st.lists(
                                     st.fixed_dictionaries({"name": st.text(max_size=4)},
                                                           optional={"parameters": ANY_JSON}),
                                     max_size=2) | ANY_JSON,
                                     "parameters": ANY_JSON, "id": ANY_JSON})


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from tests.server_helpers import Server

    root = tmp_path_factory.mktemp("properties")
    hosted = Server(write_model_dir(root, MODEL), "--workers", "1",
                    log_path=root / "hosted.log")
    store = root / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    archived = Server(store, "--model-store", str(store), "--workers", "1",
                      "--disable-token-auth", "--max-decoded-mb", "8",
                      env={"TMPDIR": str(root)}, log_path=root / "archived.log")
    try:
        hosted.wait_ready()
        archived.wait_ready()
        yield {"default": hosted, "echo": archived}
    finally:
        hosted.terminate()
        archived.terminate()


def check(server, answer: requests.Response) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.headers["Content-Type"].startswith("application/json")
        answer.json()
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200


PROPERTY = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@PROPERTY
@given(body=document(binary=False), model=st.sampled_from(["default", "echo"]))
def test_v2_json_bodies_are_never_a_500(servers, body, model):
    server = servers[model]
    answer = requests.post(server.url(f"/v2/models/{model}/infer"), data=json.dumps(body),
                           headers={"Content-Type": "application/json"}, timeout=30)
    check(server, answer)


@PROPERTY
@given(body=document(binary=True), model=st.sampled_from(["default", "echo"]),
       blobs=st.lists(st.binary(max_size=24), max_size=3),
       header=st.sampled_from(["exact", "short", "long"]) | st.text(max_size=6))
def test_v2_binary_bodies_are_never_a_500(servers, body, model, blobs, header):
    server = servers[model]
    head = json.dumps(body).encode()
    length = {"exact": str(len(head)), "short": str(max(len(head) - 2, 0)),
              "long": str(len(head) + 10)}.get(header, header)
    data = head + b"".join(struct.pack("<I", len(b)) + b if i % 2 else b
                           for i, b in enumerate(blobs))
    try:
        length.encode("latin-1")
    except UnicodeEncodeError:
        length = length.encode("utf-8").decode("latin-1")  # as raw header bytes
    answer = requests.post(server.url(f"/v2/models/{model}/infer"), data=data,
                           headers={"Inference-Header-Content-Length": length,
                                    "Content-Type": "application/octet-stream"}, timeout=30)
    check(server, answer)


@PROPERTY
@given(body=st.binary(max_size=64) | ANY_JSON.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
       content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                     "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded", "image/png", ""]),
       path=st.sampled_from(["/predictions/echo", "/predictions/echo/1.0",
                             "/predictions/echo/9", "/v1/models/echo:predict"]))
def test_predictions_bodies_are_never_a_500(servers, body, content_type, path):
    server = servers["echo"]
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(server.url(path), data=body, headers=headers, timeout=30)
    check(server, answer)
