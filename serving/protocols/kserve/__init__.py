"""KServe's inference protocols on the same models: v1 and the Open Inference Protocol (v2)
over REST, with its binary tensor data extension (this module), and the Open Inference
Protocol over gRPC (:mod:`~serving.protocols.kserve.grpc_server`, on a port of its own).

REST routes (a Flask blueprint on the main port):

- v1: ``GET /v1/models``, ``GET /v1/models/<name>``, ``POST /v1/models/<name>:predict``
  (``{"instances": [...]}`` → ``{"predictions": [...]}``);
- v2: ``GET /v2`` (server metadata), ``GET /v2/health/live`` and ``/ready``,
  ``GET /v2/models/<name>[/versions/<v>]`` (metadata) and ``.../ready``,
  ``POST /v2/models/<name>[/versions/<v>]/infer``. Every model has a version (a TorchServe
  archive its manifest's, any other ``--model-version``, 1 by default); without one a call
  takes the model's.

Errors on these routes are the protocols' own: ``{"error": "<message>"}`` (the app's error
rendering writes them so under /v1/ and /v2), with our status codes (400 a request that does
not fit the protocol, 404 an unknown model or version, 413, 503, 504, 500 a model failure).

Tensors and their checks: :mod:`~serving.protocols.kserve.tensors`; what reaches the model:
:mod:`~serving.protocols.kserve.models`.
"""

from __future__ import annotations

import functools
import json
import typing as t

import orjson
from flask import Blueprint, Response, request
from werkzeug.routing import BaseConverter

from serving import errors
from serving.contract.limits import json_document
from serving.contract.invocation import Answer
from serving.protocols.base import Direct, Protocol
from serving.protocols.kserve import models as model_calls
from serving.protocols.kserve.repository import EXTENSION, Repository
from serving.protocols.kserve.tensors import (
    HEADER_LENGTH,
    ProtocolError,
    decode_infer_request,
    encode_infer_response,
)

if t.TYPE_CHECKING:
    from serving.contract.pipeline import Pipeline

__all__ = ["KServe"]

INFER_RULE = "/v2/models/<name>/infer"
INFER_VERSION_RULE = "/v2/models/<name>/versions/<version>/infer"
#: The binary extension's header in the WSGI environ.
HEADER_LENGTH_KEY = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")

#: What ``GET /v2`` names: the protocol's extensions served here.
EXTENSIONS = ["binary_tensor_data"]


class KServe(Protocol):
    """KServe's v1 and v2 REST protocols (see the module)."""

    name = "KServe"
    error_paths = ("/v1/", "/v2/", "/v2")

    def error_body(self, error: errors.ServingError, request_id: str | None) -> dict[str, t.Any]:
        return {"error": error.message}  # KServe's protocols' errors

    def routes(self) -> Blueprint:
        routes = Blueprint("kserve", __name__)
        # A model name is one path segment without ":" (v1's ":predict" follows it).
        routes.record_once(lambda state: state.app.url_map.converters.setdefault(
            "model", _ModelName))
        self._v1(routes)
        self._v2(routes)
        self._repository(routes)
        return routes

    def extensions(self) -> list[str]:
        """The protocol's extensions this server has, as ``GET /v2`` lists them."""
        return EXTENSIONS + ([EXTENSION] if Repository(self.server).on else [])

    # -- what both versions do, through the invocation service --------------------------

    def model(self, name: str, version: str | None = None) -> Pipeline:
        return self.server.invocations.model(name, version)

    def read_body(self) -> bytes:
        return self.server.body(request.environ)

    def ask(self, environ: dict[str, t.Any] | None = None) -> model_calls.Ask:
        """The invocations of the request ``environ`` (Flask's, by default): its headers,
        id and arrival."""
        return functools.partial(self.server.invocation,
                                 request.environ if environ is None else environ)

    def infer(self, environ: dict[str, t.Any], name: str, version: str | None) -> Answer:
        """``POST /v2/models/<name>[/versions/<version>]/infer``."""
        server = self.server
        pipeline = self.model(name, version)
        document, tensors = decode_infer_request(server.body(environ),
                                                 environ.get(HEADER_LENGTH_KEY),
                                                 server.limits.max_decoded_bytes)
        datatypes = {spec["name"]: spec["datatype"] for spec in document["inputs"]}
        outputs = model_calls.infer(server, pipeline, self.ask(environ), name, tensors,
                                    datatypes)
        body, headers = encode_infer_response(document, name, pipeline.version, outputs)
        media_type = headers.pop("Content-Type")
        return Answer(body, media_type, headers=headers)

    def direct(self, environ: dict[str, t.Any]) -> Direct | None:
        """v2 infer, the protocol's hot route, past Flask's objects (see
        :class:`~serving.http.app.InvocationsPath`)."""
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v2/models/") or not path.endswith("/infer") or \
                environ.get("REQUEST_METHOD") != "POST":
            return None
        parts = path[len("/v2/models/"):-len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return INFER_RULE, lambda: self.infer(environ, parts[0], None)
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            return INFER_VERSION_RULE, lambda: self.infer(environ, parts[0], parts[2])
        return None

    def _v1(self, routes: Blueprint) -> None:
        server = self.server
        models, limit = server.models, server.limits.max_decoded_bytes
        model, read_body = self.model, self.read_body

        def loaded() -> list[str]:
            return [m["modelName"] for m in models.page(None, 1000)["models"]]

        @routes.get("/")
        def v1_live() -> Response:
            # KServe's model server answers its v1 liveness here, and its client
            # (InferenceRESTClient.is_server_live) asks nowhere else.
            return _json({"status": "alive"})

        @routes.get("/v1/models")
        def v1_models() -> Response:
            return _json({"models": loaded()})

        @routes.get("/v1/models/<model:name>")
        def v1_model(name: str) -> Response:
            return _json({"name": name, "ready": model(name).ready})

        @routes.post("/v1/models/<model:name>:predict")
        def v1_predict(name: str) -> Response:
            pipeline = model(name)
            document = json_document(read_body(), limit, "the request",
                                     error=ProtocolError)
            if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
                raise ProtocolError('the request must be an object with "instances": a list')
            instances = document["instances"]
            if pipeline.archive is not None:
                predictions = model_calls.handler_call(server, pipeline, self.ask(), instances)
            else:
                payload, media_type = model_calls.invoke(
                    server, pipeline, self.ask(), _instances_body(instances),
                    "application/json", "application/json")
                try:
                    predictions = json.loads(payload)
                except ValueError:
                    raise errors.ModelError(f"the model's answer ({media_type}) is not JSON",
                                            stage="encode") from None
            return _json({"predictions": predictions})

    def _v2(self, routes: Blueprint) -> None:
        from serving import __version__ as server_version

        server = self.server
        models, model = server.models, self.model

        @routes.get("/v2")
        def v2_server() -> Response:
            return _json({"name": "serving-toolkit", "version": server_version,
                          "extensions": self.extensions()})

        @routes.get("/v2/health/live")
        def v2_live() -> Response:
            return _json({"live": True})

        @routes.get("/v2/health/ready")
        def v2_ready() -> Response:
            if not models.ready:
                raise errors.ServiceUnavailable("the models are still loading")
            return _json({"ready": True})

        @routes.get("/v2/models/<name>")
        @routes.get("/v2/models/<name>/versions/<version>")
        def v2_metadata(name: str, version: str | None = None) -> Response:
            return _json(model_calls.metadata(model(name, version), name))

        @routes.get("/v2/models/<name>/ready")
        @routes.get("/v2/models/<name>/versions/<version>/ready")
        def v2_model_ready(name: str, version: str | None = None) -> Response:
            if not model(name, version).ready:
                raise errors.ServiceUnavailable(f"model {name} is still loading")
            return _json({"name": name, "ready": True})

        # Answered by the direct path; here for Flask's 405s, the OpenAPI check and the
        # metrics' labels.
        @routes.post(INFER_RULE)
        @routes.post(INFER_VERSION_RULE)
        def v2_infer(name: str, version: str | None = None) -> Response:
            answer = self.infer(request.environ, name, version)
            return Response(answer.body, content_type=answer.media_type,
                            headers=answer.headers)


    def _repository(self, routes: Blueprint) -> None:
        """The model repository extension (:mod:`~serving.protocols.kserve.repository`)."""
        repository = Repository(self.server)
        limit = self.server.limits.max_decoded_bytes

        def allowed() -> None:
            repository.check_client(request.environ.get("REMOTE_ADDR"))

        @routes.post("/v2/repository/index")
        def repository_index() -> Response:
            allowed()
            body = self.read_body()
            document = json_document(body, limit, "the request", error=ProtocolError) \
                if body.strip() else {}
            if not isinstance(document, dict) or not isinstance(document.get("ready", False),
                                                                bool):
                raise ProtocolError('the request must be an object: {"ready": true|false}')
            return _json(repository.index(ready_only=document.get("ready", False)))

        @routes.post("/v2/repository/models/<name>/load")
        def repository_load(name: str) -> Response:
            allowed()
            repository.load(name)
            return _json({"name": name, "load": True})

        @routes.post("/v2/repository/models/<name>/unload")
        def repository_unload(name: str) -> Response:
            allowed()
            repository.unload(name)
            return _json({"name": name, "unload": True})


def _json(document: t.Any) -> Response:
    return Response(json.dumps(document), content_type="application/json")


def _instances_body(instances: list[t.Any]) -> bytes:
    """v1's instances as the JSON body our hosting functions read."""
    try:
        return orjson.dumps(instances)
    except TypeError as exc:  # orjson nests 254 deep when writing: deeper is refused
        raise ProtocolError(f"the instances cannot be passed on as JSON: {exc}") from None


class _ModelName(BaseConverter):
    regex = "[^/:]+"
