"""Every registered media type through a real server: plain HTTP and the SDK v2 clients."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from handlers.content.recordio import Record, read_recordio

from tests.server_helpers import REPO, Server, pip_install, pip_uninstall, run_serve, write_model_dir, write_wheel

SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"
SDK_CLIENT = REPO / "tests" / "clients" / "sdk_v2_client.py"

ECHO = """
    def predict_fn(data, model):
        return data
"""


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo")
    server = Server(write_model_dir(root, ECHO), "--workers", "2", log_path=root / "serve.log")
    server.wait_ready()
    yield server
    assert server.terminate() == 0


def post(server, body, content_type, accept=None):
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    response = requests.post(server.url(), data=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == (accept or "application/json")
    return response.content


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


ARRAY = np.arange(12, dtype=np.float32).reshape(3, 4) / 4


def test_json_jsonlines_csv_round_trip(echo_server):
    assert json.loads(post(echo_server, b'{"a": [1, 2]}', "application/json")) == {"a": [1, 2]}
    assert post(echo_server, b"[1, 2]\n[3, 4]\n", "application/jsonlines",
                "application/jsonlines") == b"[1,2]\n[3,4]\n"
    # CSV comes in as float64 and goes out as AWS's encoder writes it (np.savetxt, "%s").
    assert post(echo_server, b"1,2.5\n3,4\n", "text/csv", "text/csv") == b"1.0,2.5\n3.0,4.0\n"


def test_npy_and_npz_round_trip(echo_server):
    body = post(echo_server, npy_bytes(ARRAY), "application/x-npy", "application/x-npy")
    result = np.load(io.BytesIO(body), allow_pickle=False)
    assert result.dtype == np.float32 and np.array_equal(result, ARRAY)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=ARRAY, names=np.array(["a", "bc"]))
    body = post(echo_server, buf.getvalue(), "application/x-npz", "application/x-npz")
    with np.load(io.BytesIO(body), allow_pickle=False) as result:
        assert np.array_equal(result["x"], ARRAY) and result["names"].tolist() == ["a", "bc"]


def test_images_round_trip(echo_server):
    pixels = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    body = post(echo_server, buf.getvalue(), "image/png", "image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), pixels)
    for content_type in ("image/jpeg", "application/x-image"):
        body = post(echo_server, buf.getvalue() if content_type != "image/jpeg" else
                    post(echo_server, buf.getvalue(), "image/png", "image/jpeg"),
                    content_type, "image/jpeg")
        assert Image.open(io.BytesIO(body)).size == (7, 5)


def test_recordio_round_trip(echo_server):
    record = Record()
    record.features["values"].float32_tensor.values.extend([1.5, 2.0])
    request = b"".join([bytes.fromhex("0a23d7ce18000000"), record.SerializeToString()])
    body = post(echo_server, request * 3, "application/x-recordio-protobuf",
                "application/x-recordio-protobuf")
    records = [Record.FromString(p) for p in read_recordio(body)]
    assert [list(r.label["values"].float32_tensor.values) for r in records] == [[1.5, 2.0]] * 3


def test_text_and_octet_stream_round_trip(echo_server):
    assert post(echo_server, "héllo".encode(), "text/plain; charset=utf-8",
                "text/plain") == "héllo".encode()
    assert post(echo_server, b"\x00\xff", "application/octet-stream",
                "application/octet-stream") == b"\x00\xff"


@pytest.mark.parametrize("body, content_type, says", [
    (b"1,2\n3\n", "text/csv", "equal length"),
    (b"[1]\n{\n", "application/jsonlines", "line 2 is not valid JSON"),
    (b"PK\x03\x04", "application/x-npz", "not a valid NPZ"),
    (b"\xff\xd8\xff\xe0 not really", "image/jpeg", "is not JPEG"),
    (b"\x00\x00\x00\x00\x04\x00\x00\x00abcd", "application/x-recordio-protobuf",
     "bad RecordIO magic"),
    (b"\xff", "text/plain", "not valid UTF-8"),
])
def test_bad_bodies_are_400_and_the_worker_lives_on(echo_server, body, content_type, says):
    response = requests.post(echo_server.url(), data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400 and says in response.json()["message"]
    assert requests.get(echo_server.url("/ping")).status_code == 200


# -- the SageMaker Python SDK v2, from its own environment -------------------------------


def sdk(server, scenario: str) -> dict:
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: run `make install`"
    result = subprocess.run([str(SDK_PYTHON), str(SDK_CLIENT), server.url(""), scenario],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # the SDK logs to stdout first


def test_sdk_json(echo_server):
    out = sdk(echo_server, "json")
    assert out["result"] == {"instances": [[1.5, 2], [3, 4]]}
    assert out["rows"] == [[1.5, 2], [3, 4]]


def test_sdk_numpy_including_string_arrays_without_pickles(echo_server):
    out = sdk(echo_server, "numpy")
    assert out["result"] == ARRAY.tolist() and out["dtype"] == "float32"
    assert out["sentences"] == ["a fine film", "dull and far too long", "ünïcödé"]
    assert out["sentences_dtype"] == "U"


def test_sdk_csv(echo_server):
    assert sdk(echo_server, "csv")["result"] == [["0.0", "0.25", "0.5", "0.75"],
                                                 ["1.0", "1.25", "1.5", "1.75"],
                                                 ["2.0", "2.25", "2.5", "2.75"]]


def test_sdk_jsonlines(echo_server):
    out = sdk(echo_server, "jsonlines")
    assert out["result"] == [{"a": 1}, [1, 2], "x"]
    assert out["rows"] == ARRAY.tolist()


def test_sdk_record_serializer_and_deserializer(echo_server):
    out = sdk(echo_server, "record")
    assert out["float32"] == [{"label.values.float32_tensor": row} for row in ARRAY.tolist()]
    assert out["float64"] == [{"label.values.float64_tensor": row} for row in ARRAY.tolist()]
    assert out["int"] == [{"label.values.int32_tensor": [1, 2, 3]},
                          {"label.values.int32_tensor": [4, 5, 600]}]
    assert sdk(echo_server, "record_raw")["rows"] == out["float32"]


def test_sdk_sparse_matrix_serializer(echo_server):
    result = sdk(echo_server, "sparse")["result"]
    assert result["data"] == [1.5, 2.0] and result["indices"] == [1, 0]
    assert result["shape"] == [2, 3] and result["format"] == "csr"


def test_sdk_image_bytes(echo_server):
    pixels = sdk(echo_server, "image")["result"]
    assert np.asarray(pixels).shape == (6, 5, 3) and pixels[0][0] == [200, 0, 0]


def test_sdk_text_and_npz(echo_server):
    assert sdk(echo_server, "text")["result"] == "héllo"
    out = sdk(echo_server, "npz_out")
    assert out["files"] == ["arr_0"] and out["arr_0"] == ARRAY.tolist()


PLUGIN = '''
from handlers.content import ContentHandler, DecodeError


class ShoutHandler(ContentHandler):
    media_type = "text/x-shout"

    def decode(self, body):
        if not body.isascii():
            raise DecodeError("shouts are ASCII")
        return body.decode().upper()

    def encode(self, obj):
        return (str(obj) + "!").encode()
'''


@contextlib.contextmanager
def installed_plugin(tmp_path, name: str, source: str, entry_point: str):
    """A one-module package with a serving.content_handlers entry point, pip-installed."""
    pip_install(write_wheel(tmp_path, name, {f"{name}.py": source},
                            f"[serving.content_handlers]\n{entry_point}\n"))
    try:
        yield
    finally:
        pip_uninstall(name)


def test_an_installed_plugin_package_adds_a_type(tmp_path):
    name = "serving_toolkit_shout_plugin"
    with installed_plugin(tmp_path, name, PLUGIN, f"shout = {name}:ShoutHandler"):
        server = Server(write_model_dir(tmp_path, ECHO), "--workers", "1",
                        log_path=tmp_path / "serve.log")
        server.wait_ready()
        assert post(server, b"hello", "text/x-shout", "text/x-shout") == b"HELLO!"
        response = requests.post(server.url(), data="é".encode(),
                                 headers={"Content-Type": "text/x-shout"})
        assert response.status_code == 400 and response.json()["message"] == "shouts are ASCII"
        unsupported = requests.post(server.url(), data=b"x", headers={"Content-Type": "text/x-no"})
        assert "text/x-shout" in unsupported.json()["supported"]
        assert server.terminate() == 0


def test_a_plugin_that_clashes_stops_startup(tmp_path):
    name = "serving_toolkit_clash_plugin"
    source = "from handlers.content.json import JSONHandler as Mine\n"
    with installed_plugin(tmp_path, name, source, f"json2 = {name}:Mine"):
        result = run_serve("--model-dir", str(write_model_dir(tmp_path, ECHO)))
        assert result.returncode == 1
        assert f"plugin json2 ({name}:Mine, from {name})" in result.stderr
        assert "application/json is already handled" in result.stderr


@pytest.mark.mxnet
def test_mxnet_recordio_with_continuation_flags(echo_server):
    # A client process of its own, as a user's MXNet job would be.
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "clients" / "mxnet_recordio_client.py"),
         echo_server.url()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["flags"] == [1, 2, 3] * 3  # MXNet split each record at the magic numbers
    assert len(out["rows"]) == 3
    assert np.array_equal(np.float32(out["rows"]), np.float32([out["sent"]] * 3))


def test_a_type_registered_from_inference_py(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        from handlers.content import ContentHandler, register

        class Reversed(ContentHandler):
            media_type = "text/x-reversed"

            def decode(self, body):
                return body[::-1].decode()

            def encode(self, obj):
                return str(obj)[::-1].encode()

        register(Reversed())

        def predict_fn(data, model):
            return data.upper()
    """)
    server = Server(model_dir, "--workers", "1", log_path=tmp_path / "serve.log")
    server.wait_ready()
    assert post(server, b"olleh", "text/x-reversed", "text/x-reversed") == b"OLLEH"
    assert server.terminate() == 0
