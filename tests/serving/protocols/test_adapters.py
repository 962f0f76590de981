"""The protocol adapters in process (Flask's test client, no server): each claims its routes
and writes its own error body; a new protocol is one adapter and one line in PROTOCOLS, and
its invocations keep every promise of the invocation service without a line of its own."""

from __future__ import annotations

import types

import pytest
from flask import Blueprint, Response, request

from handlers.content import default_registry
from serving import protocols
from serving.config import Config
from serving.contract.pipeline import Pipeline
from serving.http.app import create_app
from serving.protocols.base import REQUEST_ID_KEY, Protocol, answer_response
from serving.protocols.kserve import KServe
from serving.protocols.sagemaker import SageMaker
from serving.protocols.torchserve import TorchServe


def app_of(tmp_path, argv=(), **functions):
    module = types.ModuleType("inference")
    module.__file__ = "inference.py"
    module.model_fn = lambda model_dir: None
    for name, fn in functions.items():
        setattr(module, name, fn)
    config = Config.load(["--model-dir", str(tmp_path), *argv], {})
    pipeline = Pipeline.from_module(module, default_registry(), model_dir=str(tmp_path),
                                    default_accept=config.default_accept)
    pipeline.load_model()
    return create_app(config, pipeline)


def test_the_registry_lists_each_adapter_once_sagemaker_first():
    assert protocols.PROTOCOLS[0] == "serving.protocols.sagemaker:SageMaker"
    assert len(set(protocols.PROTOCOLS)) == len(protocols.PROTOCOLS)


def test_each_protocol_writes_errors_in_its_own_body(tmp_path):
    client = app_of(tmp_path, predict_fn=lambda data, model: data).test_client()
    sagemaker = client.post("/invocations", data=b"[1", content_type="application/json",
                            headers={"X-Request-Id": "abc"})
    assert sagemaker.status_code == 400
    assert sagemaker.json["request_id"] == "abc" and sagemaker.json["code"] == 400
    kserve = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert kserve.status_code == 404 and set(kserve.json) == {"error"}
    torchserve = client.post("/predictions/nope", data=b"[1]")
    assert torchserve.status_code == 404 and torchserve.json["type"] == "NotFound"


def test_the_direct_path_takes_each_protocols_hot_routes_only(tmp_path):
    app = app_of(tmp_path, predict_fn=lambda data, model: data)
    door = app.wsgi_app.door
    claimed = {type(p).__name__ for p in door.directs}
    assert claimed == {"SageMaker", "TorchServe", "KServe"}
    post = {"REQUEST_METHOD": "POST"}
    assert door.direct_route({**post, "PATH_INFO": "/invocations"})[0] == "/invocations"
    assert door.direct_route({**post, "PATH_INFO": "/predictions/m/2"})[0] == \
        "/predictions/<name>/<version>"
    assert door.direct_route({**post, "PATH_INFO": "/v2/models/m/infer"})[0] == \
        "/v2/models/<name>/infer"
    assert door.direct_route({**post, "PATH_INFO": "/v2/models/m/versions/3/infer"})[0] == \
        "/v2/models/<name>/versions/<version>/infer"
    for path in ("/v2/models/m/ready", "/v2/models//infer", "/v2/models/m/x/3/infer",
                 "/v2/models/m/versions//infer", "/v1/models/m:predict"):
        assert door.direct_route({**post, "PATH_INFO": path}) is None, path
    assert door.direct_route({"REQUEST_METHOD": "GET", "PATH_INFO": "/invocations"}) is None
    assert door.direct_route({"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/models/m/infer"}) \
        is None


class Echo(Protocol):
    """A protocol in a dozen lines: POST /echo/<anything> with the body as the model's input."""

    name = "Echo"
    error_paths = ("/echo/",)

    def error_body(self, error, request_id):
        return {"echo-error": error.message}

    def routes(self):
        routes = Blueprint("echo", __name__)
        server = self.server

        @routes.post("/echo/<path:anything>")
        def echo(anything: str) -> Response:
            environ = request.environ
            answer = server.invocations.invoke(server.invocations.model(), server.invocation(
                environ, server.body(environ), environ.get("CONTENT_TYPE"),
                environ.get("HTTP_ACCEPT")))
            return answer_response(answer, server.invocations, environ[REQUEST_ID_KEY])

        return routes


def test_a_new_protocol_is_one_adapter_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(protocols, "PROTOCOLS",
                        (*protocols.PROTOCOLS, f"{__name__}:Echo"))
    client = app_of(tmp_path, ["--max-payload-mb", "0.001", "--request-timeout", "1"],
                    predict_fn=lambda data, model: [x * 3 for x in data]).test_client()
    assert client.post("/echo/x", json=[1, 2]).json == [3, 6]
    # What the invocation service and the front door promise, kept with no code of its own:
    refused = client.post("/echo/x", data=b"[1]", content_type="text/x-nothing")
    assert refused.status_code == 415 and "echo-error" in refused.json
    assert client.post("/echo/x", json=[1], headers={"Accept": "image/x-no"}).status_code == 406
    too_big = client.post("/echo/x", data=b"[" + b"1," * 1000 + b"1]",
                          content_type="application/json")
    assert too_big.status_code == 413 and "echo-error" in too_big.json


def test_the_adapters_own_what_they_say(tmp_path):
    assert KServe.error_paths and SageMaker.error_paths == ()
    app = app_of(tmp_path, predict_fn=lambda data, model: data)
    rules = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    assert rules["/invocations"].startswith("sagemaker.")
    assert rules["/predictions/<name>"].startswith("torchserve.")
    assert rules["/v2/models/<name>/infer"].startswith("kserve.")
    # TorchServe's guard and own port stay closed without a model store or management port.
    door = app.wsgi_app.door
    assert door.guards == [] and door.own_ports == {}
    assert TorchServe.name == "TorchServe"


@pytest.mark.parametrize("path", ["/v2", "/v2/health/nothing", "/v1/models/x"])
def test_kserve_paths_get_kserve_errors_whatever_route_they_reach(tmp_path, path):
    client = app_of(tmp_path, predict_fn=lambda data, model: data).test_client()
    response = client.delete(path)
    assert response.status_code in (404, 405) and set(response.json) == {"error"}
