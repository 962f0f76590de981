"""SageMaker's hosting contract, as an adapter: ``/ping``, ``/execution-parameters``,
``POST /invocations`` (and the ``/endpoints/<name>/invocations[-response-stream]`` forms
the SageMaker runtime API's clients address), and a multi-model endpoint's ``/models``
routes (list, describe, load, unload, ``/models/<name>/invoke``).

A request's SageMaker headers become the invocation's: its target model
(``X-Amzn-SageMaker-Target-Model``), custom attributes, target variant, inference id and
session id; a JSON body may open or close a stateful session. Errors are our JSON body
(``code``, ``type``, ``message``, ``request_id``).
"""

from __future__ import annotations

import os
import typing as t

from flask import Blueprint, Response, current_app, request

from serving import errors
from serving.contract.invocation import Answer, Invocations
from serving.contract.models import MAX_PAGE_SIZE, PAGE_SIZE, ModelRepository, valid_model_name
from serving.contract.streams import Stream
from serving.protocols import eventstream
from serving.protocols.base import (
    ID_ENVIRON_KEYS,
    REQUEST_ID_KEY,
    Direct,
    Protocol,
    answer_response,
    serves_archives,
    stream_error_code,
)

if t.TYPE_CHECKING:
    from serving.contract.pipeline import Pipeline

__all__ = ["BATCH_STRATEGY", "SageMaker", "TARGET_MODEL_HEADER"]

#: ``BatchStrategy`` reported to batch transform: it may pack many records into one request.
BATCH_STRATEGY = "MultiRecord"
#: Multi-model: the model an /invocations request is for (boto3's ``TargetModel``).
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
INVOCATIONS_RULE = "/invocations"


class SageMaker(Protocol):
    name = "SageMaker"
    invocation_rules = frozenset({INVOCATIONS_RULE, "/endpoints/<name>/invocations",
                                  "/endpoints/<name>/invocations-response-stream",
                                  "/models/<name>/invoke"})
    # SageMaker's host asks every few seconds.
    quiet_paths = frozenset({"/ping"})

    def target(self, environ: dict[str, t.Any]) -> Pipeline:
        """The model an /invocations request is for."""
        server = self.server
        return server.invocations.model(
            environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL") if server.models.multi else None,
            named_in=f"in {TARGET_MODEL_HEADER}, or POST /models/<name>/invoke")

    def answer(self, pipeline: Pipeline, environ: dict[str, t.Any]) -> Answer:
        """One invocation from a SageMaker request."""
        server = self.server
        invocations = server.invocations
        # Negotiated (and readiness checked) before the body is read: a refusal costs no read.
        negotiated = invocations.negotiate(pipeline, environ.get("CONTENT_TYPE"),
                                           environ.get("HTTP_ACCEPT"))
        return invocations.invoke(pipeline, server.invocation(
            environ, server.body(environ), negotiated.content_type, None,
            custom_attributes=environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"),
            target_variant=environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_VARIANT"),
            inference_id=environ.get(ID_ENVIRON_KEYS[0]),
            session_id=environ.get("HTTP_X_AMZN_SAGEMAKER_SESSION_ID"),
            session_requests=True), negotiated)

    def direct(self, environ: dict[str, t.Any]) -> Direct | None:
        if environ.get("PATH_INFO") == INVOCATIONS_RULE and \
                environ.get("REQUEST_METHOD") == "POST":
            return INVOCATIONS_RULE, lambda: self.answer(self.target(environ), environ)
        return None

    def routes(self) -> Blueprint:
        server = self.server
        config, models, invocations = server.config, server.models, server.invocations
        routes = Blueprint("sagemaker", __name__)
        # TorchServe's clients read /ping's JSON; SageMaker's host reads only the status.
        healthy_json = serves_archives(server)

        def respond(pipeline: Pipeline, event_stream: bool = False) -> Response:
            environ = request.environ
            answer = self.answer(pipeline, environ)
            if event_stream:
                return event_stream_response(answer, invocations, environ[REQUEST_ID_KEY])
            return answer_response(answer, invocations, environ[REQUEST_ID_KEY])

        @routes.get("/ping")
        def ping() -> Response:
            if not models.ready:
                raise errors.ServiceUnavailable("the model is still loading")
            if healthy_json:
                return current_app.json.response({"status": "Healthy"})
            return Response(status=200)

        @routes.get("/execution-parameters")
        def execution_parameters() -> Response:
            return current_app.json.response({
                "MaxConcurrentTransforms": config.workers,
                "BatchStrategy": BATCH_STRATEGY,
                "MaxPayloadInMB": config.max_payload_mb if config.max_payload_mb % 1
                else int(config.max_payload_mb),
            })

        @routes.post(INVOCATIONS_RULE)  # answered by the direct path; here for Flask's 405s
        @routes.post("/endpoints/<name>/invocations")
        def invocations_(name: str | None = None) -> Response:
            return respond(self.target(request.environ))

        @routes.post("/endpoints/<name>/invocations-response-stream")
        def invocations_response_stream(name: str) -> Response:
            """boto3's invoke_endpoint_with_response_stream: the answer in event-stream
            messages, streamed when the model streams, else in one part."""
            return respond(self.target(request.environ), event_stream=True)

        @routes.post("/models/<name>/invoke")
        def invoke_model(name: str) -> Response:
            return respond(models.get(name))

        @routes.get("/models")
        def list_models() -> Response:
            args = request.args
            try:
                size = int(args.get("page_size", PAGE_SIZE))
            except ValueError:
                size = 0
            if not 1 <= size <= MAX_PAGE_SIZE:
                raise errors.BadRequest(f"page_size must be 1-{MAX_PAGE_SIZE}")
            return current_app.json.response(models.page(args.get("next_page_token"), size))

        @routes.get("/models/<name>")
        def describe_model(name: str) -> Response:
            return current_app.json.response(models.describe(name))

        if isinstance(models, ModelRepository):  # loading and unloading: multi-model only
            self._model_admin(routes, models)
        return routes

    def _model_admin(self, routes: Blueprint, repository: ModelRepository) -> None:
        config = self.server.config

        @routes.post("/models")
        def load_model() -> Response:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise errors.BadRequest('the body must be a JSON object: {"model_name": ..., '
                                        '"url": ...}')
            name, url = body.get("model_name"), body.get("url")
            if not valid_model_name(name):
                raise errors.BadRequest("model_name must be 1-255 characters: letters, digits "
                                        "and ._+=- (not starting with one of those)")
            if not isinstance(url, str) or not url.startswith("/"):
                raise errors.BadRequest("url must be the model's directory, an absolute path")
            # Only from where SageMaker puts the models it loads: on Kubernetes, whoever
            # reaches /invocations reaches this route too, and a model is code.
            root = os.path.realpath(config.multi_model_root)
            real = os.path.realpath(url)
            if os.path.commonpath([real, root]) != root:
                raise errors.BadRequest(
                    f"url {url} is outside {root}, the directory models load from "
                    f"({config.where('multi_model_root')}; set --multi-model-root)")
            entry = repository.load(name, real, source=url if real != url else None)
            return current_app.json.response({"status": f"model {entry.name} loaded",
                                              **entry.describe()})

        @routes.delete("/models/<name>")
        def unload_model(name: str) -> Response:
            repository.unload(name)
            return current_app.json.response({"status": f"model {name} unloaded"})


def event_stream_response(answer: Answer, invocations: Invocations,
                          request_id: str) -> Response:
    """``answer`` in AWS event-stream messages (InvokeEndpointWithResponseStream). A failure
    after the first chunk is a ModelStreamError message: the status is sent already."""
    body = answer.body
    stream = body if isinstance(body, Stream) else Stream(body, iter(()), None)

    def messages() -> t.Iterator[bytes]:
        try:
            for chunk in invocations.chunks(stream, request_id):
                yield eventstream.payload_part(chunk)
        except Exception as exc:
            code = stream_error_code(exc)
            message = exc.message if isinstance(exc, errors.ServingError) \
                else f"the model raised {type(exc).__name__}"
            yield eventstream.model_stream_error(message, code)

    response = Response(messages(), status=200, content_type=eventstream.CONTENT_TYPE)
    response.headers["X-Amzn-SageMaker-Content-Type"] = answer.media_type
    response.headers.update(answer.headers)
    return response
