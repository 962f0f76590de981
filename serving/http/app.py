"""The Flask app: routes, request limits, request ids, metrics and error rendering. No
decoding, no model logic."""

from __future__ import annotations

import json
import logging
import os
import time
import typing as t

from flask import Flask, Response, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length, get_input_stream

from serving import errors
from serving.config import Config
from serving.contract.invocation import Answer, Invocation, Invocations
from serving.contract.limits import Limits
from serving.contract.models import (
    DEFAULT_MODEL,
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    ModelRepository,
    Models,
    valid_model_name,
    versioned,
)
from serving.contract.pipeline import Pipeline
from serving.contract.sessions import session_store
from serving.contract.streams import Stream
from serving.http import eventstream
from serving.contract.negotiation import content_type_of
from serving.runtime import logs
from serving.runtime.executor import Runtime
from serving.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.runtime.metrics import NO_ROUTE, Metrics, count_model_metrics

__all__ = ["InvocationsPath", "create_app", "route_of"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

#: ``BatchStrategy`` reported to batch transform: it may pack many records into one request.
BATCH_STRATEGY = "MultiRecord"
#: WSGI environ key where the server puts when a request arrived (``time.monotonic()``):
#: the request deadline counts from there, not from when a thread got to it.
ARRIVED_KEY = "serving.arrived"
#: Where a request's id comes from: the first of these headers the client sent (SageMaker
#: sends the first with every invocation), else one is made up. Answers carry it in
#: ``X-Request-Id``.
REQUEST_ID_HEADERS = ("X-Amzn-SageMaker-Inference-Id", "X-Request-Id", "X-Amzn-RequestId")
_ID_ENVIRON_KEYS = tuple("HTTP_" + h.upper().replace("-", "_") for h in REQUEST_ID_HEADERS)
RESPONSE_ID_HEADER = "X-Request-Id"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
#: Multi-model: the model an /invocations request is for (boto3's ``TargetModel``).
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
#: WSGI environ keys of a request's state: its id, and what teardown undoes.
REQUEST_ID_KEY = "serving.request_id"
_TOKEN_KEY = "serving.id_token"
#: The OpenAPI description of every route, kept beside this module and served as it is.
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


def request_id_of(values: t.Iterable[str | None]) -> str:
    """The id of a request, given the values of its :data:`REQUEST_ID_HEADERS` (``None``
    for those it lacks): the caller's, when it is short visible ASCII, else a new one."""
    for value in values:
        if value is not None:
            if logs.valid_request_id(value):
                return value
            break  # a bad id is replaced, never echoed into logs and headers
    return logs.new_request_id()


def route_of(app: Flask, method: str, path: str) -> str:
    """The route rule ``method path`` would reach, as the metrics label it; ``none`` for
    none (for requests a host refuses before the app sees them)."""
    try:
        rule, _ = app.url_map.bind("localhost").match(path, method, return_rule=True)
        return rule.rule
    except Exception:  # no such route or method, an odd target: none
        return NO_ROUTE


def create_app(config: Config, models: Models | Pipeline, runtime: Runtime | None = None,
               metrics: Metrics | None = None) -> Flask:
    """Build the app serving ``models`` (or one pipeline, as the model ``default``).

    :param runtime: runs each request under its deadline; by default one made
        from ``config`` (threads start in the process that first uses it).
    :param metrics: where requests are counted (``serve`` makes it for all its
        workers); by default, with ``config.metrics``, metrics of this process only.
    """
    if isinstance(models, Pipeline):
        models = Models({DEFAULT_MODEL: models})
    runtime = runtime or Runtime(config.concurrency, config.deadline_seconds)
    if metrics is None and config.metrics:
        metrics = Metrics(content_types=None if models.multi else models.default.input_types)
    limits = Limits.from_config(config)
    invocations_ = Invocations(models, runtime, limits, default_accept=config.default_accept,
                               sessions=session_store(config), metrics=metrics)
    app = Flask("serving", static_folder=None)  # no static files: no /static route
    app.json.sort_keys = False
    # The one invocation service: the host's other doors (a worker's WebSocket streams)
    # invoke through it too.
    app.extensions["serving.invocations"] = invocations_
    limit = limits.max_payload_bytes
    metrics_port = str(config.metrics_port) if config.metrics_port is not None else None
    openapi = openapi_description(models.multi)

    def render(error: errors.ServingError, environ: dict[str, t.Any] | None = None) -> Response:
        environ = request.environ if environ is None else environ
        path = environ.get("PATH_INFO", "")
        if path == "/v2" or path.startswith(KSERVE_PREFIXES):
            body: dict[str, t.Any] = {"error": error.message}  # KServe's protocols' errors
        else:
            body = error.to_dict()
            body["request_id"] = environ.get(REQUEST_ID_KEY) or logs.request_id.get() or None
        response = app.json.response(body)
        response.status_code = error.status_code
        response.headers.update(error.headers)
        return response

    def render_bug(error: Exception, environ: dict[str, t.Any] | None = None) -> Response:
        environ = request.environ if environ is None else environ
        log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"))
        message = f"internal error: {type(error).__name__}"
        if config.debug_errors:
            message += f": {error}"
        return render(errors.ServingError(message), environ)

    @app.errorhandler(errors.ServingError)
    def on_serving_error(error: errors.ServingError) -> Response:
        return render(error)

    @app.errorhandler(HTTPException)
    def on_http_exception(error: HTTPException) -> Response:
        if error.code == 405:
            allowed = error.valid_methods or []  # type: ignore[attr-defined]
            return render(errors.MethodNotAllowed(request.method, request.path, allowed))
        if error.code == 404:
            return render(errors.NotFound(f"no route {request.method} {request.path}"))
        code = error.code or 500
        kind = errors.ClientError if 400 <= code < 500 else errors.ServingError
        return render(kind(error.description, status_code=code))

    @app.errorhandler(Exception)
    def on_bug(error: Exception) -> Response:
        return render_bug(error)

    # What every request goes through, Flask's or the direct path's (InvocationsPath):
    # each reads the WSGI environ once and keeps its state there.
    def start(environ: dict[str, t.Any]) -> None:
        environ.setdefault(ARRIVED_KEY, time.monotonic())
        rid = environ[REQUEST_ID_KEY] = request_id_of(environ.get(k) for k in _ID_ENVIRON_KEYS)
        # Reset when the request ends: the HTTP thread serves other requests next.
        environ[_TOKEN_KEY] = logs.request_id.set(rid)

    def finish(environ: dict[str, t.Any], route: str, status: int,
               headers: t.Any, body_length: int | None) -> None:
        """Count and log the answer, and give it the request's id (``headers``: a list of
        pairs, or werkzeug's Headers)."""
        if isinstance(headers, list):
            headers.append((RESPONSE_ID_HEADER, environ.get(REQUEST_ID_KEY, "")))
        else:
            headers[RESPONSE_ID_HEADER] = environ.get(REQUEST_ID_KEY, "")
        elapsed = time.monotonic() - environ.get(ARRIVED_KEY, time.monotonic())
        if metrics is not None:
            header = environ.get("CONTENT_TYPE")
            try:
                content_type = content_type_of(header) if header else None
            except ValueError:
                content_type = "invalid"
            metrics.request_done(route, status, content_type, elapsed)
            if route.endswith(("/invocations", "/invoke")) or route.startswith("/predictions/"):
                metrics.bodies(get_content_length(environ) or 0, body_length)
        # /ping comes every few seconds from the host: keep it out of INFO logs.
        path = environ.get("PATH_INFO", "")
        level = logging.DEBUG if path == "/ping" else logging.INFO
        if access_log.isEnabledFor(level):
            method, remote = environ.get("REQUEST_METHOD"), environ.get("REMOTE_ADDR")
            # The target as sent (the worker checked it has no spaces or line breaks), or
            # rebuilt; anything unprintable is escaped, so it cannot forge a line.
            target = environ.get("RAW_URI")
            if not target:
                query = environ.get("QUERY_STRING")
                target = f"{path}?{query}" if query else path
            if not (target.isascii() and target.isprintable()):
                target = ascii(target)
            log_access_line(level, '%s "%s %s" %d %.1fms', remote, method, target, status,
                            elapsed * 1000,
                            fields={"status": status, "latency_ms": round(elapsed * 1000, 3),
                                    "method": method, "path": path, "remote": remote})

    def end(environ: dict[str, t.Any]) -> None:
        token = environ.pop(_TOKEN_KEY, None)
        if token is not None:
            logs.request_id.reset(token)

    @app.before_request
    def start_request() -> None:
        environ = request.environ
        start(environ)
        if metrics_port is not None:
            path = environ.get("PATH_INFO")
            if (path == "/metrics") != (environ.get("SERVER_PORT") == metrics_port):
                # /metrics only on its own port, and nothing else there.
                raise errors.NotFound(f"no route {environ.get('REQUEST_METHOD')} {path}")

    @app.after_request
    def finish_request(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        finish(req.environ, rule.rule if rule is not None else NO_ROUTE, response.status_code,
               response.headers, response.content_length)
        return response

    @app.teardown_request
    def end_request(_: BaseException | None) -> None:
        end(request.environ)

    # TorchServe's clients read /ping's JSON; SageMaker's host reads only the status.
    serves_archives = any(p.archive is not None for p in models.loaded()) or \
        config.model_store is not None
    if metrics is not None and (serves_archives or models.multi):
        count_model_metrics(metrics)  # what TorchServe handlers report

    @app.get("/ping")
    def ping() -> Response:
        if not models.ready:
            raise errors.ServiceUnavailable("the model is still loading")
        if serves_archives:
            return app.json.response({"status": "Healthy"})
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return app.json.response({
            "MaxConcurrentTransforms": config.workers,
            "BatchStrategy": BATCH_STRATEGY,
            "MaxPayloadInMB": config.max_payload_mb if config.max_payload_mb % 1
            else int(config.max_payload_mb),
        })

    def target_model(environ: dict[str, t.Any]) -> Pipeline:
        return invocations_.model(
            environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL") if models.multi else None,
            named_in=f"in {TARGET_MODEL_HEADER}, or POST /models/<name>/invoke")

    @app.post("/invocations")
    @app.post("/endpoints/<name>/invocations")
    def invocations(name: str | None = None) -> Response:
        return invoke(target_model(request.environ))

    @app.post("/endpoints/<name>/invocations-response-stream")
    def invocations_response_stream(name: str) -> Response:
        """boto3's invoke_endpoint_with_response_stream: the answer in event-stream
        messages, streamed when the model streams, else in one part."""
        return invoke(target_model(request.environ), event_stream=True)

    @app.post("/models/<name>/invoke")
    def invoke_model(name: str) -> Response:
        return invoke(models.get(name))

    # TorchServe's inference API: the model by its name (and version). Answered by the
    # direct path (InvocationsPath); the routes are here for 405s, the OpenAPI check and
    # the metrics' labels.
    @app.route(PREDICTIONS_RULE, methods=list(PREDICTIONS_METHODS))
    @app.route(PREDICTIONS_VERSION_RULE, methods=list(PREDICTIONS_METHODS))
    def predictions(name: str, version: str | None = None) -> Response:
        return invoke(versioned(models, name, version))

    @app.get("/models")
    def list_models() -> Response:
        args = request.args
        try:
            size = int(args.get("page_size", PAGE_SIZE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise errors.BadRequest(f"page_size must be 1-{MAX_PAGE_SIZE}")
        return app.json.response(models.page(args.get("next_page_token"), size))

    @app.get("/models/<name>")
    def describe_model(name: str) -> Response:
        return app.json.response(models.describe(name))

    if isinstance(models, ModelRepository):  # loading and unloading: multi-model only
        repository = models

        @app.post("/models")
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
            return app.json.response({"status": f"model {entry.name} loaded", **entry.describe()})

        @app.delete("/models/<name>")
        def unload_model(name: str) -> Response:
            repository.unload(name)
            return app.json.response({"status": f"model {name} unloaded"})

    def predict(pipeline: Pipeline, environ: dict[str, t.Any]) -> Answer:
        """One SageMaker (or TorchServe) invocation from the WSGI environ."""
        if not pipeline.ready:  # before the body is read
            raise errors.ServiceUnavailable("the model is still loading")
        negotiated = invocations_.negotiate(pipeline, environ.get("CONTENT_TYPE"),
                                            environ.get("HTTP_ACCEPT"))
        headers = EnvironHeaders(environ)
        return invocations_.invoke(pipeline, Invocation(
            read_body(environ, limit), negotiated.content_type, None, headers,
            request_id=environ[REQUEST_ID_KEY], arrived=environ[ARRIVED_KEY],
            custom_attributes=environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"),
            target_variant=environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_VARIANT"),
            inference_id=environ.get(_ID_ENVIRON_KEYS[0]),
            session_id=environ.get("HTTP_X_AMZN_SAGEMAKER_SESSION_ID"),
            session_requests=True), negotiated)

    def response_of(answer: Answer, request_id: str, event_stream: bool = False) -> Response:
        """The response carrying ``answer``.

        :param event_stream: frame the answer as AWS event-stream messages.
        """
        payload, media_type = answer.body, answer.media_type
        if event_stream:
            chunks = payload if isinstance(payload, Stream) else Stream(payload, iter(()), None)
            response = Response(streamed(chunks, request_id, framed=True), status=200,
                                content_type=eventstream.CONTENT_TYPE)
            response.headers["X-Amzn-SageMaker-Content-Type"] = media_type
        elif isinstance(payload, Stream):
            response = Response(streamed(payload, request_id), status=200,
                                content_type=media_type)
        else:
            # A TorchServe handler may set its request's status (set_response_status).
            response = Response(payload, status=answer.status or 200, content_type=media_type)
        response.headers.update(answer.headers)
        return response

    def invoke(pipeline: Pipeline, event_stream: bool = False) -> Response:
        """Answer one invocation with ``pipeline`` (a Flask view's answer)."""
        environ = request.environ
        return response_of(predict(pipeline, environ), environ[REQUEST_ID_KEY], event_stream)

    def streamed(stream: Stream, request_id: str, framed: bool = False) -> t.Iterator[bytes]:
        """A streamed answer's chunks as the response body (the invocation service pulls
        them under the deadline).

        A failure after the first chunk cannot change the status: in event-stream framing
        it is a ModelStreamError message; otherwise the connection closes without the
        chunked body's end, so the client sees the answer cut short.
        """
        part = eventstream.payload_part if framed else bytes
        try:
            for chunk in invocations_.chunks(stream, request_id):
                yield part(chunk)
        except Exception as exc:
            code = ("ModelInvocationTimeExceeded"
                    if isinstance(exc, errors.DeadlineExceeded) else "ModelError")
            if framed:
                message = exc.message if isinstance(exc, errors.ServingError) \
                    else f"the model raised {type(exc).__name__}"
                yield eventstream.model_stream_error(message, code)
                return
            raise errors.StreamAborted(code) from exc

    def invoke_for_protocol(pipeline: Pipeline, body: bytes, content_type: str,
                            accept: str) -> tuple[bytes, str]:
        """One invocation a protocol's route made up (KServe's): its body, Content-Type and
        Accept, under the request's deadline; the answer whole."""
        environ = request.environ
        answer = invocations_.invoke(pipeline, Invocation(
            body, content_type, accept, EnvironHeaders(environ),
            request_id=environ[REQUEST_ID_KEY], arrived=environ[ARRIVED_KEY], streams=False))
        return t.cast(bytes, answer.body), answer.media_type

    from serving import __version__
    from serving.protocols.kserve import blueprint as kserve_routes

    app.register_blueprint(kserve_routes(
        config, models, invoke_for_protocol,
        lambda fn, *args: runtime.call(fn, *args, started=request.environ[ARRIVED_KEY]),
        lambda: read_body(request.environ, limit), __version__))

    if metrics is not None:
        @app.get("/metrics")
        def prometheus_metrics() -> Response:
            return Response(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    def openapi_spec() -> Response:
        return Response(openapi, content_type="application/json")

    def direct_route(environ: dict[str, t.Any]) -> tuple[str, t.Callable[[], Pipeline]] | None:
        """The rule and model of a request the direct path answers: ``POST /invocations``
        and TorchServe's ``/predictions/<name>[/<version>]``; ``None``: Flask's."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if path == INVOCATIONS_RULE:
            if method == "POST":
                return INVOCATIONS_RULE, lambda: target_model(environ)
        elif path.startswith("/predictions/") and method in PREDICTIONS_METHODS:
            parts = path[len("/predictions/"):].split("/")
            if len(parts) == 1 and parts[0]:
                return PREDICTIONS_RULE, lambda: versioned(models, parts[0], None)
            if len(parts) == 2 and all(parts):
                return PREDICTIONS_VERSION_RULE, lambda: versioned(models, *parts)
        return None

    def invocations_directly(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any],
                             rule: str, model: t.Callable[[], Pipeline]) -> t.Iterable[bytes]:
        """An invocation without Flask's request and response objects (see
        :class:`InvocationsPath`): the same steps as the view and the hooks around it."""
        start(environ)
        try:
            try:
                answer = predict(model(), environ)
                payload = answer.body
                if not isinstance(payload, (bytes, bytearray)) or answer.status is not None:
                    # Streamed (werkzeug frames it), or a status a handler set.
                    return respond(environ, start_response, rule,
                                   response_of(answer, environ[REQUEST_ID_KEY]))
            except errors.ServingError as exc:
                return respond(environ, start_response, rule, render(exc, environ))
            except Exception as exc:  # as Flask's handler for bugs answers them
                return respond(environ, start_response, rule, render_bug(exc, environ))
            headers = [("Content-Type", answer.media_type),
                       ("Content-Length", str(len(payload)))]
            headers.extend(answer.headers.items())
            finish(environ, rule, 200, headers, len(payload))
            start_response("200 OK", headers)
            return (payload,)
        finally:
            end(environ)

    def respond(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any], rule: str,
                response: Response) -> t.Iterable[bytes]:
        finish(environ, rule, response.status_code, response.headers, response.content_length)
        return response(environ, start_response)

    management = None
    if config.management_port is not None and isinstance(models, ModelRepository):
        from serving.protocols.torchserve_management import management_app

        management = (str(config.management_port), management_app(config, models))

    authorize = None
    if config.token_auth and config.model_store is not None:
        # Started as TorchServe is (a model store): its inference API's key, on every
        # route of the main port but the API's description and the metrics.
        from serving.protocols.torchserve_tokens import KeyFile

        keys = KeyFile(config.key_file, config.token_expiration_min)

        def authorize(environ: dict[str, t.Any],
                      start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes] | None:
            path = environ.get("PATH_INFO", "")
            if path in OPEN_WITHOUT_KEY:
                return None
            try:
                keys.check(environ.get("HTTP_AUTHORIZATION"), "inference")
                return None
            except errors.ServingError as exc:
                start(environ)
                try:
                    return respond(environ, start_response,
                                   route_of(app, environ.get("REQUEST_METHOD", ""), path),
                                   render(exc, environ))
                finally:
                    end(environ)

    app.wsgi_app = InvocationsPath(  # type: ignore[method-assign]
        app.wsgi_app, invocations_directly, direct_route, metrics_port, management, authorize)
    return app


#: The main port's routes that need no key under token authorization: TorchServe 0.12
#: answers its API description and its metrics without one.
OPEN_WITHOUT_KEY = frozenset({"/openapi.json", "/metrics"})


#: Where KServe's v1 and v2 routes live: errors there are answered as those protocols
#: define them (``{"error": message}``), whatever route, or none, they reached.
KSERVE_PREFIXES = ("/v1/", "/v2/")
#: The routes the direct path answers, as Flask's rules and the metrics' labels name them.
INVOCATIONS_RULE = "/invocations"
PREDICTIONS_RULE = "/predictions/<name>"
PREDICTIONS_VERSION_RULE = "/predictions/<name>/<version>"
#: The methods TorchServe's inference API takes on /predictions.
PREDICTIONS_METHODS = ("GET", "POST", "PUT")


class InvocationsPath:
    """WSGI middleware: invocations (``POST /invocations``, TorchServe's ``/predictions``)
    straight to the pipeline, everything else to Flask.

    Why: at small models most of a request's CPU was Flask's, not the model's: the
    request and app contexts, URL matching, the Request and Response objects, signals
    (py-spy, 32 clients, the peers' MLP: half the GIL-held samples under
    ``Flask.wsgi_app``). The direct path does what the route and its hooks do, in the
    same order, on the environ: request id, the same errors rendered by the same code,
    metrics, the access line; the answer is the same status, headers and body. Every
    test of these routes goes through it, Flask's test client's included, since this is
    Flask's own middleware slot (``app.wsgi_app``).

    :param route: the rule and model of a request the direct path answers, else ``None``.
    :param management: TorchServe's management API: its port, and the app that answers
        everything there (nothing else is answered on it).
    :param authorize: token authorization of the main port: the answer refusing a
        request, or ``None`` to let it through.
    """

    def __init__(self, flask_app: t.Callable[..., t.Iterable[bytes]],
                 invocations: t.Callable[..., t.Iterable[bytes]],
                 route: t.Callable[[dict[str, t.Any]], t.Any],
                 metrics_port: str | None,
                 management: tuple[str, t.Callable[..., t.Iterable[bytes]]] | None = None,
                 authorize: t.Callable[..., t.Iterable[bytes] | None] | None = None
                 ) -> None:
        self.authorize = authorize
        self.flask_app = flask_app
        self.invocations = invocations
        self.route = route
        #: With /metrics on a port of its own, nothing else is answered there: Flask's
        #: hook refuses it, so requests on that port go through Flask.
        self.metrics_port = metrics_port
        self.management_port, self.management_app = management or (None, None)

    def __call__(self, environ: dict[str, t.Any],
                 start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        port = environ.get("SERVER_PORT")
        if self.management_app is not None and port == self.management_port:
            return self.management_app(environ, start_response)
        if self.metrics_port is None or port != self.metrics_port:
            if self.authorize is not None:
                refused = self.authorize(environ, start_response)
                if refused is not None:
                    return refused
            found = self.route(environ)
            if found is not None:
                return self.invocations(environ, start_response, *found)
        return self.flask_app(environ, start_response)


def openapi_description(multi_model: bool) -> bytes:
    """The OpenAPI description of this server: the repository's file, without the
    operations marked ``x-multi-model`` unless it is a multi-model server."""
    with open(OPENAPI_PATH, "rb") as f:
        if multi_model:
            return f.read()
        spec = json.load(f)
    spec["paths"] = {path: kept for path, operations in spec["paths"].items()
                     if (kept := {method: operation for method, operation in operations.items()
                                  if not operation.get("x-multi-model")})}
    return json.dumps(spec, ensure_ascii=False).encode("utf-8")


def log_access_line(level: int, message: str, *args: object,
                    fields: dict[str, t.Any] | None = None) -> None:
    """One access line: the record ``logging.log`` makes, without its walk up the stack to
    find the caller (a third of its cost, paid on every request; the caller is known).

    :param fields: record attributes for structured logs (status, latency_ms, …).
    """
    access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, message, args,
                                            None, extra=fields))


def read_body(environ: dict[str, t.Any], limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes.

    With a Content-Length the size is checked before anything is read; a
    chunked body is read up to the limit and refused as soon as it passes it.
    The length and the stream are werkzeug's, as its Request reads them.
    """
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise errors.PayloadTooLarge(limit, length)
    # One read of at most limit + 1 bytes: the stream stops at Content-Length, or
    # at the end of a chunked body, so anything past the limit means 413.
    body = get_input_stream(environ).read(limit + 1)
    if len(body) > limit:
        raise errors.PayloadTooLarge(limit)
    if length is not None and len(body) < length:
        # The client closed its side early: predicting on part of a body is never right.
        raise errors.BadRequest(
            f"the body ended after {len(body)} of the {length} bytes its Content-Length declared"
        )
    return body
