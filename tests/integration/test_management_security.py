"""The management surfaces closed by default, on a real ``serve``: where the management
API listens, TorchServe's token authorization (key file, keys, answers, renewal), the
model API off unless enabled, urls judged on their real path, cross-site requests
refused. The same answers as TorchServe 0.12 are checked against TorchServe itself in
tests/torchserve/test_security.py."""

from __future__ import annotations

import json

import pytest
import requests

from tests.server_helpers import free_port
from tests.torchserve.archives import write_archive

pytestmark = [pytest.mark.torchserve, pytest.mark.pytorch]

ECHO = (b"def handle(data, context):\n    if data is None:\n        return None\n"
        b"    return [{'ok': True} for _ in data]\n")
DENIED = ("Token Authorization failed. Token either incorrect, expired, or not provided "
          "correctly")


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    return store


def start(serve, tmp_path, store, *flags):
    port = free_port()
    (tmp_path / "tmp").mkdir(exist_ok=True)
    server = serve(store, "--model-store", str(store), "--workers", "2",
                   "--management-port", str(port), *flags,
                   env={"TMPDIR": str(tmp_path / "tmp")}, ready=False)
    server.manage = lambda path: f"http://127.0.0.1:{port}{path}"
    server.management_port = port
    return server


def upgrade(server, headers) -> bytes:
    """The head of the answer to a WebSocket upgrade at the stream path."""
    from tests.integration.test_bidirectional_stream import STREAM_PATH, handshake_socket

    with handshake_socket(server, STREAM_PATH,
                          {"X-Amzn-SageMaker-Target-Model": "echo", **headers}) as sock:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
            head += chunk
    return head


def keys_of(path):
    return {kind: entry["key"] for kind, entry in json.loads(path.read_text()).items()}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_by_default_every_call_needs_its_key_and_nothing_registers(serve, tmp_path, store):
    key_file = tmp_path / "key_file.json"
    server = start(serve, tmp_path, store, "--key-file", str(key_file))
    server.wait_ready(headers=lambda: bearer(keys_of(key_file)["inference"]))
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys = keys_of(key_file)
    assert set(keys) == {"management", "inference", "API"}
    # The main port: the inference key, nothing else; the API description is open.
    for headers in ({}, bearer(keys["management"]), {"Authorization": keys["inference"]},
                    {"Authorization": f"bearer {keys['inference']}"}):
        for method, path in (("GET", "/ping"), ("POST", "/predictions/echo"),
                             ("POST", "/invocations"), ("GET", "/v2/health/ready")):
            answer = requests.request(method, server.url(path), headers=headers, json=1,
                                      timeout=10)
            assert answer.status_code == 400, (path, headers, answer.text)
            message = answer.json().get("message", answer.json().get("error"))
            assert message == DENIED
    answer = requests.post(server.url("/predictions/echo"), json=1,
                           headers=bearer(keys["inference"]), timeout=10)
    assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert requests.get(server.url("/openapi.json"), timeout=10).status_code == 200
    # A WebSocket stream is a request of the main port too.
    assert upgrade(server, {}).startswith(b"HTTP/1.1 400")
    assert upgrade(server, bearer(keys["inference"])).startswith(b"HTTP/1.1 101")
    # The management port: the management key.
    denied = requests.get(server.manage("/models"), headers=bearer(keys["inference"]),
                          timeout=10)
    assert denied.status_code == 400 and denied.json() == {
        "code": 400, "type": "InvalidKeyException", "message": DENIED}
    listed = requests.get(server.manage("/models"), headers=bearer(keys["management"]),
                          timeout=10)
    assert listed.status_code == 200 and listed.json()["models"][0]["modelName"] == "echo"
    # Registering and unregistering are off: TorchServe's 405.
    for method, path in (("POST", "/models?url=echo.mar&model_name=e2"),
                         ("DELETE", "/models/echo")):
        answer = requests.request(method, server.manage(path),
                                  headers=bearer(keys["management"]), timeout=10)
        assert answer.status_code == 405 and answer.json()["type"] == \
            "MethodNotAllowedException", answer.text
    assert requests.post(server.url("/predictions/echo"), json=1,
                         headers=bearer(keys["inference"]), timeout=10).status_code == 200
    # A new inference key, with the API key: the old one stops working in every worker.
    assert requests.get(server.manage("/token?type=inference"),
                        headers=bearer(keys["management"]), timeout=10).status_code == 400
    renewed = requests.get(server.manage("/token?type=inference"),
                           headers=bearer(keys["API"]), timeout=10)
    assert renewed.status_code == 200, renewed.text
    new = keys_of(key_file)["inference"]
    assert new != keys["inference"]
    for _ in range(6):  # new connections: both workers get turns
        old = requests.post(server.url("/predictions/echo"), json=1, timeout=10,
                            headers={**bearer(keys["inference"]), "Connection": "close"})
        assert old.status_code == 400
        good = requests.post(server.url("/predictions/echo"), json=1, timeout=10,
                             headers={**bearer(new), "Connection": "close"})
        assert good.status_code == 200
    # The management API listens on loopback only.
    assert server.terminate() == 0
    assert not key_file.exists()  # removed with the server, as TorchServe does


def test_the_management_api_listens_on_loopback_whatever_host_is(serve, tmp_path, store):
    server = start(serve, tmp_path, store, "--host", "0.0.0.0", "--disable-token-auth")
    server.wait_ready()
    listening = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    port = f"{server.management_port:04X}"
    local = {fields[1] for fields in listening if fields[1].endswith(f":{port}")
             and fields[3] == "0A"}  # LISTEN
    assert local == {f"0100007F:{port}"}, local  # 127.0.0.1 only


def test_cross_site_requests_change_nothing(serve, tmp_path, store):
    outside = tmp_path / "outside"
    outside.mkdir()
    write_archive(outside / "far.mar", "far", {"echo.py": ECHO}, handler="echo.py")
    (store / "link.mar").symlink_to(outside / "far.mar")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    write_archive(allowed / "ok.mar", "ok", {"echo.py": ECHO}, handler="echo.py")
    server = start(serve, tmp_path, store, "--disable-token-auth", "--enable-model-api",
                   "--allowed-urls", f"file://{allowed}/.*", "--models", "echo=echo.mar")
    server.wait_ready()
    register = server.manage("/models?url=echo.mar&model_name=e2")
    # What a web page on another site can send: a form post, a no-CORS fetch.
    for headers in ({"Content-Type": "application/x-www-form-urlencoded",
                     "Origin": "http://evil.example"},
                    {"Content-Type": "text/plain"},
                    {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        answer = requests.post(register, headers=headers, timeout=10)
        assert answer.status_code == 403, (headers, answer.text)
    deleted = requests.delete(server.manage("/models/echo"), headers={"Origin": "http://x"},
                              timeout=10)
    assert deleted.status_code == 403
    # A DNS rebinding: a name that is not this machine's, on a loopback-bound port.
    rebound = requests.get(server.manage("/models"), headers={"Host": "evil.example:80"},
                           timeout=10)
    assert rebound.status_code == 403
    assert requests.get(server.manage("/models"), timeout=10).json()["models"] == [
        {"modelName": "echo", "modelUrl": "echo.mar"}]
    # A script's call works; urls are judged on their real path.
    assert requests.post(register, timeout=60).status_code == 200
    for url, status in ((str(outside / "far.mar"), 404), ("link.mar", 404),
                        (f"file://{outside}/far.mar", 404), ("../outside/far.mar", 404),
                        (f"file://{allowed}/ok.mar", 200), (str(allowed / "ok.mar"), 409)):
        answer = requests.post(server.manage("/models"), params={"url": url}, timeout=60)
        assert answer.status_code == status, (url, answer.text)
        if status == 404:
            assert answer.json()["type"] == "ModelNotFoundException"
    assert requests.post(server.url("/predictions/ok"), json=1, timeout=10).json() == \
        {"ok": True}
    assert requests.post(server.url("/predictions/far"), json=1, timeout=10).status_code == 404


@pytest.mark.parametrize("key, why", [("cors_allowed_origin=*", "CORS"),
                                      ("keystore=keys.jks", "TLS"),
                                      ("blacklist_env_vars=AWS_.*", "environment")])
def test_a_config_key_that_cannot_be_honoured_stops_the_start(tmp_path, store, key, why):
    from tests.server_helpers import run_serve

    config = tmp_path / "config.properties"
    config.write_text(f"{key}\n")
    done = run_serve("--model-store", str(store), "--ts-config", str(config),
                     "--host", "127.0.0.1", "--port", str(free_port()))
    assert done.returncode != 0
    assert key.split("=")[0] in done.stderr and why in done.stderr, done.stderr


def test_config_properties_keys_open_and_close_it(tmp_path, store):
    from serving.config import Config

    config = tmp_path / "config.properties"
    config.write_text("management_address=http://0.0.0.0:8081\nenable_model_api=true\n"
                      "disable_token_authorization=true\ntoken_expiration_min=5\n"
                      f"model_server_home={tmp_path}\nallowed_urls=file:///models/.*\n")
    loaded = Config.load(["--model-store", str(store), "--ts-config", str(config)], environ={})
    assert (loaded.management_host, loaded.enable_model_api, loaded.token_auth) == \
        ("0.0.0.0", True, False)
    assert loaded.token_expiration_min == 5
    assert loaded.key_file == str(tmp_path / "key_file.json")
    assert loaded.allowed_url_patterns == ("file:///models/.*",)
    # TorchServe's variables, with enable_envvars_config; our flags win over the file.
    config.write_text("enable_envvars_config=true\nuse_env_allowed_urls=true\n")
    loaded = Config.load(["--model-store", str(store), "--ts-config", str(config)],
                         environ={"TS_ENABLE_MODEL_API": "true",
                                  "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
                                  "TS_ALLOWED_URLS": "file:///a/.*,file:///b/.*"})
    assert loaded.enable_model_api and not loaded.token_auth
    assert loaded.allowed_url_patterns == ("file:///a/.*", "file:///b/.*")
    closed = Config.load(["--model-store", str(store)], environ={})
    assert (closed.management_host, closed.enable_model_api, closed.token_auth) == \
        ("127.0.0.1", False, True)


def test_grpc_needs_the_inference_key_as_the_main_port_does(serve, tmp_path, store):
    """gRPC is a way in beside the main port: on a model store's server (token
    authorization on) every call needs the inference key too, as ``authorization``
    metadata; without it UNAUTHENTICATED with TorchServe's message."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    key_file = tmp_path / "key_file.json"
    grpc_port = free_port()
    server = start(serve, tmp_path, store, "--key-file", str(key_file),
                   "--grpc-port", str(grpc_port))
    server.wait_ready(headers=lambda: bearer(keys_of(key_file)["inference"]))
    keys = keys_of(key_file)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("authorization", f"Bearer {keys['management']}"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), metadata=metadata,
                                   timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == DENIED
        found = stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), timeout=30,
                                   metadata=(("authorization", f"Bearer {keys['inference']}"),))
        assert found.name == "echo" and found.platform == "torchserve"
