"""Every byte a request makes a worker hold is bounded before it is held, and every
malformed request is a 4xx with its protocol's error body, on every protocol: KServe v1 and
v2, TorchServe's /predictions and management API, /invocations (the session check), the
WebSocket stream; a session's requests wait for it without spending their deadline. Each
case is one an attacker tried (issue "Closed by default"), against a real ``serve``; the
worker that answered it answers the next request."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zipfile

import pytest
import requests

from tests.server_helpers import free_port, write_model_dir
from tests.torchserve.archives import write_archive

MODEL = '''
import time
import numpy as np


def model_fn(model_dir):
    return 2


def predict_fn(data, model, context):
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(data["sleep"])
        return {"slept": data["sleep"]}
    if isinstance(data, np.ndarray) and data.dtype.kind in "SUO":
        return np.char.upper(data.astype(bytes))
    return data
'''

#: The tests that serve a TorchServe archive (the torchserve extra, torch).
TORCHSERVE = [pytest.mark.torchserve, pytest.mark.pytorch]

ECHO = (b"def handle(data, context):\n    if data is None:\n        return None\n"
        b"    return [{'type': type(row.get('body')).__name__} for row in data]\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.server_helpers import Server

    root = tmp_path_factory.mktemp("bounds")
    store = root / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    (root / "tmp").mkdir()
    port = free_port()
    server = Server(store, "--model-store", str(store), "--workers", "1",
                    "--disable-token-auth", "--enable-model-api", "--management-port",
                    str(port), "--max-decoded-mb", "4",
                    env={"TMPDIR": str(root / "tmp")}, log_path=root / "serve.log")
    server.manage = lambda path: f"http://127.0.0.1:{port}{path}"
    server.tmp = root / "tmp"
    server.store = store
    server.wait_ready(timeout=60)
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """Our hosting functions (not an archive) behind KServe's routes, sessions on."""
    from tests.server_helpers import Server

    root = tmp_path_factory.mktemp("hosted")
    model = write_model_dir(root, MODEL)
    server = Server(model, "--workers", "1", "--threads", "4", "--stateful-sessions",
                    "--sessions-path", str(root / "sessions"), "--request-timeout", "3",
                    "--session-wait", "8", "--max-decoded-mb", "4",
                    "--stream-max-message-mb", "0.01", log_path=root / "serve.log")
    server.wait_ready(timeout=60)
    yield server
    server.terminate()


def alive(server) -> None:
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_kserve_bytes_cannot_cost_elements_times_the_longest(hosted):
    # 8,000 elements, one of them 50 KB: 400 MB as a fixed-width array.
    document = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [8000],
                            "data": ["a" * 50_000] + [""] * 7999}]}
    answer = requests.post(hosted.url("/v2/models/default/infer"), json=document, timeout=30)
    assert answer.status_code == 413, answer.text
    assert "fixed-width" in answer.json()["error"]
    small = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    answer = requests.post(hosted.url("/v2/models/default/infer"), json=small, timeout=30)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == ["A", "B"]


@pytest.mark.parametrize("path", ["/v1/models/default:predict", "/v2/models/default/infer"])
@pytest.mark.parametrize("served", ["hosted", pytest.param("server", marks=TORCHSERVE)])
def test_kserve_json_is_held_to_the_decoded_limit_and_the_nesting_bound(request, served,
                                                                        path):
    # Our hosting functions, and an archive's handler: both have a 4 MiB limit.
    target = request.getfixturevalue(served)
    url = target.url(path.replace("default", "default" if served == "hosted" else "echo"))
    # 300,000 empty lists: 600 KB of body, ~20 MiB parsed, past the 4 MiB limit.
    many = b'{"instances": [' + b",".join([b"[]"] * 300_000) + b"]}"
    answer = requests.post(url, data=many, timeout=30)
    assert answer.status_code == 413, answer.text[:200]
    nested = requests.post(url, data=b'{"instances": ' + deep(20_000) + b"}", timeout=30)
    assert nested.status_code == 400 and "error" in nested.json(), nested.text[:200]
    alive(target)


@pytest.mark.torchserve
@pytest.mark.pytorch
def test_predictions_json_is_held_to_the_limits(server):
    many = b"[" + b",".join([b"[]"] * 300_000) + b"]"
    answer = requests.post(server.url("/predictions/echo"), data=many,
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413, answer.text
    # Too deep to be JSON here: passed on as bytes, as TorchServe passes what it cannot
    # parse; never a RecursionError.
    nested = requests.post(server.url("/predictions/echo"), data=deep(20_000),
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert nested.status_code == 200 and nested.json() == {"type": "bytes"}
    alive(server)


def test_the_session_check_is_held_to_the_limits(hosted):
    body = b'{"requestType": ' + deep(20_000) + b"}"
    answer = requests.post(hosted.url(), data=body,
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 400, answer.text
    many = b'{"requestType": "NEW_SESSION", "x": [' + b",".join([b"[]"] * 300_000) + b"]}"
    answer = requests.post(hosted.url(), data=many,
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413, answer.text
    alive(hosted)


@pytest.mark.parametrize("header", ["²", "9" * 5000, "-1", "1e3"])
def test_a_malformed_header_length_is_400(hosted, header):
    answer = requests.post(hosted.url("/v2/models/default/infer"), data=b"{}",
                           headers={"Inference-Header-Content-Length": header}, timeout=10)
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in \
        answer.json()["error"]


@pytest.mark.parametrize("tensor, why", [
    ({"shape": [0, 2**63], "datatype": "FP32", "data": []}, "dimensions"),
    ({"shape": [1] * 40, "datatype": "FP32", "data": [1.0]}, "dimensions"),
    ({"shape": [1], "datatype": "UINT8", "data": [-1]}, "UINT8"),
    ({"shape": [1], "datatype": "INT64", "data": [2**70]}, "INT64"),
    ({"shape": [1], "datatype": "FP16", "data": [1e300]}, "FP16"),
    ({"shape": [1], "datatype": "FP32", "data": [1e39]}, "FP32"),
])
def test_tensors_outside_their_datatype_or_shape_are_400(hosted, tensor, why):
    document = {"inputs": [{"name": "x", **tensor}]}
    answer = requests.post(hosted.url("/v2/models/default/infer"), json=document, timeout=10)
    assert answer.status_code == 400, answer.text
    assert why in answer.json()["error"]


@pytest.mark.parametrize("datatype, data", [("UINT64", [2**64 - 1, 0]),
                                           ("INT64", [-2**63, 2**63 - 1]),
                                           ("UINT8", [0, 255]), ("FP16", [65504.0, -1e-3])])
def test_the_edges_of_each_datatype_are_taken(hosted, datatype, data):
    document = {"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}
    answer = requests.post(hosted.url("/v2/models/default/infer"), json=document, timeout=10)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert output["datatype"] == datatype
    assert output["data"] == pytest.approx(data, rel=1e-3)


def test_output_parameters_that_are_not_an_object_are_400(hosted):
    document = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "output-0", "parameters": [1]}]}
    answer = requests.post(hosted.url("/v2/models/default/infer"), json=document, timeout=10)
    assert answer.status_code == 400, answer.text


def _mar(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)


@pytest.mark.torchserve
@pytest.mark.pytorch
def test_a_failed_unpack_leaves_nothing_and_a_huge_manifest_is_not_read(server):
    manifest = json.dumps({"model": {"modelName": "bad", "handler": "h.py",
                                     "serializedFile": "missing.pt"}}).encode()
    _mar(server.store / "missing.mar", [("MAR-INF/MANIFEST.json", manifest),
                                        ("h.py", b"x = 1\n" * 100_000)])
    ok = json.dumps({"model": {"modelName": "clash", "handler": "h.py"}}).encode()
    _mar(server.store / "clash.mar", [("MAR-INF/MANIFEST.json", ok), ("h.py", b"x"),
                                      ("a", b"file"), ("a/b", b"inside a file")])
    _mar(server.store / "huge.mar", [("MAR-INF/MANIFEST.json", b" " * (300 * 2**20))])
    assert (server.store / "huge.mar").stat().st_size < 1_000_000
    for name in ("missing", "clash", "huge"):
        answer = requests.post(server.manage("/models"), params={"url": f"{name}.mar"},
                               timeout=60)
        assert answer.status_code == 400, (name, answer.text)
        leftovers = [p for p in server.tmp.rglob("*") if p.is_file()
                     and p.parent.name.startswith(name)]
        assert leftovers == [], leftovers
    alive(server)


def _frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_empty_continuation_frames_count_against_the_stream(hosted):
    from tests.integration.test_bidirectional_stream import STREAM_PATH, handshake_socket

    server = hosted
    with handshake_socket(server, STREAM_PATH) as sock:
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(_frame(0x1, b"x", fin=False))
        # 10 KiB of message limit: 160 empty frames, at 64 bytes each, reach it.
        sent, closed = 0, b""
        try:
            for _ in range(2000):
                sock.sendall(_frame(0x0, b"", fin=False))
                sent += 1
        except OSError:
            pass
        sock.settimeout(10)
        try:
            while len(closed) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                closed += chunk
        except OSError:
            pass
    assert closed[:1] == b"\x88", closed[:20]  # a Close frame
    (code,) = struct.unpack("!H", closed[2:4])
    assert code == 1009
    alive(server)


def test_a_session_waits_without_spending_its_deadline(hosted):
    opened = requests.post(hosted.url(), json={"requestType": "NEW_SESSION"}, timeout=10)
    session = opened.json()["session_id"]
    answers: list[int] = []

    def ask() -> None:
        answer = requests.post(hosted.url(), json={"sleep": 1.2}, timeout=30,
                               headers={"X-Amzn-SageMaker-Session-Id": session})
        answers.append(answer.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    # Another client, meanwhile, is answered at once (threads are not all held).
    started = time.monotonic()
    assert requests.post(hosted.url(), json={"sleep": 0}, timeout=10).status_code == 200
    assert time.monotonic() - started < 1.0
    for thread in threads:
        thread.join()
    # 4 × 1.2 s behind one another with a 3 s deadline: none timed out, no worker retired.
    assert sorted(answers) == [200] * 4, answers
    assert "still running" not in hosted.log


def test_a_session_busy_past_the_wait_is_429(serve, tmp_path):
    model = write_model_dir(tmp_path, MODEL)
    server = serve(model, "--workers", "1", "--threads", "4", "--stateful-sessions",
                   "--sessions-path", str(tmp_path / "sessions"), "--session-wait", "0.3")
    session = requests.post(server.url(), json={"requestType": "NEW_SESSION"},
                            timeout=10).json()["session_id"]
    headers = {"X-Amzn-SageMaker-Session-Id": session}
    slow = threading.Thread(target=requests.post, args=(server.url(),),
                            kwargs={"json": {"sleep": 1.5}, "headers": headers, "timeout": 30})
    slow.start()
    time.sleep(0.4)
    busy = requests.post(server.url(), json={"sleep": 0}, headers=headers, timeout=10)
    slow.join()
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert "busy" in busy.json()["message"]
    assert requests.post(server.url(), json={"sleep": 0}, headers=headers,
                         timeout=10).status_code == 200
