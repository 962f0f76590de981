"""The same archives, built by TorchServe's own archiver, served by TorchServe 0.12 and by
us; the same requests to both: the same status codes and bodies.

Where we differ on purpose, the test says so and checks both sides: a handler that
raises or answers the wrong number of times is TorchServe's 503 and our 500 (a model
failure, with our JSON); an answer written as JSON with no content type set is
TorchServe's bare body and our application/json.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.torchserve.archives import ARCHIVES


@pytest.fixture(scope="module")
def ours(store, serve):
    return serve(store, "--model-store", str(store), "--models", "all", "--workers", "2",
                 "--disable-token-auth")


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    from tests.server_helpers import Server

    servers = []

    def start(model_dir, *args):
        server = Server(model_dir, *args,
                        log_path=tmp_path_factory.mktemp("ours") / "serve.log")
        servers.append(server)
        server.wait_ready(timeout=120)
        return server

    yield start
    for server in servers:
        server.terminate()


def both(torchserve, ours, method: str, path: str, **kwargs):
    theirs = requests.request(method, torchserve.url(path), timeout=30, **kwargs)
    mine = requests.request(method, ours.url(path), timeout=30, **kwargs)
    return theirs, mine


def comparable(answer: requests.Response):
    """The body as a handler made it: parsed JSON with the probe's view of the headers
    keyed in lower case (HTTP names have no case) and without Host (its port differs)."""
    try:
        body = answer.json()
    except ValueError:
        return answer.content
    if isinstance(body, dict) and isinstance(body.get("headers"), dict):
        body["headers"] = {k.lower(): v for k, v in body["headers"].items() if k != "Host"}
        if "content-type" in body["headers"]:  # requests makes a new boundary each time
            body["headers"]["content-type"] = re.sub(r"boundary=\w+", "boundary=B",
                                                     body["headers"]["content-type"])
    return body


def close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


PROBE_REQUESTS = {
    "json": {"json": {"a": 1, "b": [1.5, "x"]}},
    "raw bytes": {"data": b"\x00\x01\xfe", "headers": {"Content-Type": "application/octet-stream"}},
    "text with charset": {"data": "héllo".encode(), "headers": {"Content-Type": "text/plain; charset=utf-8"}},
    "no content type": {"data": b"plain"},
    "json that is not": {"data": b"{nope", "headers": {"Content-Type": "application/json"}},
    "multipart": {"files": {"data": ("f.png", b"\x89PNGfake", "image/png")},
                  "data": {"field": "value"}},
    "multipart fields only": {"files": {"one": (None, b"1"), "two": (None, b"2")}},
    "urlencoded": {"data": {"data": "a bc", "other": "1"}},
    "custom header": {"json": {}, "headers": {"X-Custom-Thing": "v1"}},
}


@pytest.mark.parametrize("case", PROBE_REQUESTS)
def test_a_handler_sees_each_request_as_torchserve_gives_it(torchserve, ours, case):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/probe", **PROBE_REQUESTS[case])
    assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
    mine, theirs = comparable(mine), comparable(theirs)
    assert mine.pop("headers") == theirs.pop("headers")
    assert mine == theirs


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_other_methods_of_the_predictions_api(torchserve, ours, method):
    theirs, mine = both(torchserve, ours, method, "/predictions/probe", data=b"x")
    assert theirs.status_code == mine.status_code == 200
    assert comparable(mine) == comparable(theirs)


@pytest.mark.parametrize("mode, status, content_type, body", [
    ("status", 418, None, None),
    ("ctype", 200, "application/x-probe", b"raw-bytes"),
    ("text", 200, None, b"plain text"),
])
def test_what_a_handler_sets_reaches_the_client(torchserve, ours, mode, status, content_type,
                                                body):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/probe", json={"mode": mode})
    assert theirs.status_code == mine.status_code == status
    if status != 200:  # TorchServe sends no reason for 200, we send OK
        assert theirs.reason == mine.reason
    if content_type is not None:
        assert theirs.headers["Content-Type"] == mine.headers["Content-Type"] == content_type
    if body is not None:
        assert theirs.content == mine.content == body
    else:
        assert comparable(mine) == comparable(theirs)


def test_a_json_answer_is_written_as_torchserve_writes_it(torchserve, ours):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/eager", json=[1, 2, 3, 4])
    assert mine.content == theirs.content  # json.dumps(answer, indent=2), byte for byte
    assert mine.content.startswith(b'{\n  "label": ')
    assert "Content-Type" not in theirs.headers  # TorchServe labels it nothing; we do
    assert mine.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("mode, message", [("raise", "Prediction failed"),
                                           ("short", "number of batch response mismatched")])
def test_a_failing_handler_fails_its_request_not_the_worker(torchserve, ours, mode, message):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/probe", json={"mode": mode})
    assert theirs.status_code == 503 and theirs.json()["message"] == message
    assert mine.status_code == 500
    assert mine.json()["type"] == "ModelError" and "probe handler" in mine.json()["message"]
    after = requests.post(ours.url("/predictions/probe"), json={"a": 2}, timeout=30)
    assert after.status_code == 200  # the worker goes on


@pytest.mark.parametrize("path, status", [("/predictions/probe/2.0", 200),
                                          ("/predictions/probe/3.0", 404),
                                          ("/predictions/nope", 404)])
def test_models_and_versions_by_path(torchserve, ours, path, status):
    theirs, mine = both(torchserve, ours, "POST", path, json={})
    assert theirs.status_code == mine.status_code == status
    if status == 404:
        assert theirs.json()["code"] == mine.json()["code"] == 404


def test_ping(torchserve, ours):
    theirs, mine = both(torchserve, ours, "GET", "/ping")
    assert theirs.status_code == mine.status_code == 200
    assert theirs.json() == mine.json() == {"status": "Healthy"}


@pytest.mark.parametrize("request_", [{"json": [1.0, -2.0, 0.5, 3.0]},
                                      {"json": [0, 0, 0, 0]}])
def test_torchscript_model_with_base_handler(torchserve, ours, request_):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/scripted", **request_)
    assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
    assert len(mine.json()) == 2 and close(mine.json(), theirs.json())


@pytest.mark.parametrize("request_", [
    {"data": b"1,2,3,4", "headers": {"Content-Type": "text/plain"}},
    {"json": [0.5, -1, 2, 0]},
    {"files": {"data": ("row.txt", b"4,3,2,1", "text/plain")}},
])
def test_eager_model_with_a_custom_handler(torchserve, ours, request_):
    theirs, mine = both(torchserve, ours, "POST", "/predictions/eager", **request_)
    assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
    assert close(mine.json(), theirs.json())
    assert set(mine.json()) == {"label", "scores"}


def test_a_batching_handler_gets_batches_and_each_request_its_own_answer(torchserve, ours):
    def burst(server):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(
                lambda i: requests.post(server.url("/predictions/batching"),
                                        json={"i": i}, timeout=60), range(32)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert [b["echo"] for b in bodies] == [{"i": i} for i in range(32)]
        assert all(b["batch_size"] == 4 for b in bodies)  # batchSize from the archive's YAML
        return max(b["batch"] for b in bodies)

    assert burst(torchserve) > 1
    assert burst(ours) > 1


def test_every_archive_is_served(torchserve, ours):
    for name in ARCHIVES:
        assert requests.get(ours.url(f"/models/{name}"), timeout=10).status_code == 200


# -- the management API ----------------------------------------------------------------


@pytest.fixture(scope="module")
def managed(store, serve):
    """Ours with TorchServe's management API on a port of its own."""
    from tests.server_helpers import free_port

    port = free_port()
    server = serve(store, "--model-store", str(store), "--models", "all", "--workers", "2",
                   "--management-port", str(port), "--disable-token-auth", "--enable-model-api")
    server.management = lambda path: f"http://127.0.0.1:{port}{path}"
    return server


def both_managed(torchserve, managed, method: str, path: str, **kwargs):
    theirs = requests.request(method, torchserve.management(path), timeout=60, **kwargs)
    mine = requests.request(method, managed.management(path), timeout=60, **kwargs)
    return theirs, mine


def test_management_lists_the_models(torchserve, managed):
    theirs, mine = both_managed(torchserve, managed, "GET", "/models")
    assert theirs.status_code == mine.status_code == 200
    listing = lambda answer: sorted((m["modelName"], m["modelUrl"])  # noqa: E731
                                    for m in answer.json()["models"])
    assert listing(mine) == listing(theirs) == sorted((n, f"{n}.mar") for n in ARCHIVES)


@pytest.mark.parametrize("name", ["probe", "batching"])
def test_management_describes_a_model(torchserve, managed, name):
    theirs, mine = both_managed(torchserve, managed, "GET", f"/models/{name}")
    assert theirs.status_code == mine.status_code == 200
    (theirs,), (mine,) = theirs.json(), mine.json()
    for key in ("modelName", "modelVersion", "modelUrl", "runtime", "batchSize",
                "loadedAtStartup"):
        assert mine[key] == theirs[key], key
    if name == "batching":  # from the archive's config YAML
        assert mine["maxBatchDelay"] == theirs["maxBatchDelay"] == 200
    assert theirs["workers"][0]["status"] == mine["workers"][0]["status"] == "READY"


def test_management_registers_and_unregisters(torchserve, managed):
    register = "/models?url=probe.mar&model_name=probe2&initial_workers=1&synchronous=true"
    theirs, mine = both_managed(torchserve, managed, "POST", register)
    assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
    pattern = r'Model "probe2" Version: 2\.0 registered with \d+ initial workers'
    assert re.fullmatch(pattern, theirs.json()["status"])
    assert re.fullmatch(pattern, mine.json()["status"])
    for server in (torchserve, managed):
        answer = requests.post(server.url("/predictions/probe2"), json={"a": 1}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_name"] == "probe2"
    again = both_managed(torchserve, managed, "POST", register)
    assert [a.status_code for a in again] == [409, 409]
    theirs, mine = both_managed(torchserve, managed, "DELETE", "/models/probe2")
    assert theirs.status_code == mine.status_code == 200
    assert theirs.json() == mine.json() == {"status": 'Model "probe2" unregistered'}
    for server in (torchserve, managed):
        assert requests.post(server.url("/predictions/probe2"), json={},
                             timeout=30).status_code == 404


@pytest.mark.parametrize("method, path", [("GET", "/models/nope"),
                                          ("DELETE", "/models/nope"),
                                          ("GET", "/models/probe/9.9")])
def test_management_of_what_is_not_there(torchserve, managed, method, path):
    theirs, mine = both_managed(torchserve, managed, method, path)
    assert theirs.status_code == mine.status_code == 404
    assert theirs.json()["code"] == mine.json()["code"] == 404


def test_management_refuses_a_register_without_url(torchserve, managed):
    theirs, mine = both_managed(torchserve, managed, "POST", "/models")
    assert theirs.status_code == mine.status_code == 400
