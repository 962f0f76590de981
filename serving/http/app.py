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
from serving.contract.context import valid_custom_attributes
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
from serving.contract.sessions import (
    CLOSE,
    CLOSED_HEADER,
    NEW_HEADER,
    NEW_SESSION,
    SessionStore,
    check_session_id,
    session_request_type,
)
from serving.contract.streams import Stream
from serving.http import eventstream
from serving.contract.negotiation import content_type_of, negotiate
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
    if metrics is not None:
        observe = metrics.stage
        batch = metrics.batch

        def watch(pipeline: Pipeline) -> None:
            pipeline.observe_stage = observe
            if pipeline.batcher is not None:
                pipeline.batcher.on_batch = batch
                pipeline.batcher.trial.on_decision = metrics.batching_trial

        for pipeline in models.loaded():
            watch(pipeline)
        models.on_build = watch
    app = Flask("serving", static_folder=None)  # no static files: no /static route
    app.json.sort_keys = False
    limit = config.max_payload_bytes
    metrics_port = str(config.metrics_port) if config.metrics_port is not None else None
    openapi = openapi_description(models.multi)
    sessions = (SessionStore(config.sessions_path, config.sessions_expiration,
                             config.session_wait)
                if config.enable_stateful_sessions else None)

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
        if not models.multi:
            return models.default
        target = environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL")
        if target is None and models.default_name is not None:  # one archive at start
            return models.get(models.default_name)
        if target is None:
            raise errors.BadRequest(f"a multi-model endpoint needs the model's name: in "
                                    f"{TARGET_MODEL_HEADER}, or POST /models/<name>/invoke")
        return models.get(target)

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

    def predict(pipeline: Pipeline, environ: dict[str, t.Any]) -> tuple[t.Any, str, dict[str, str]]:
        """Run one invocation with ``pipeline``: ``(payload, media type, reply headers)``,
        the payload bytes or a :class:`Stream`."""
        if not pipeline.ready:
            raise errors.ServiceUnavailable("the model is still loading")
        negotiated = negotiate(environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"),
                               pipeline.decoders, pipeline.encoders, config.default_accept)
        attributes = environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES")
        if attributes is not None and not valid_custom_attributes(attributes):
            raise errors.BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} must be 1-1024 visible ASCII "
                                    f"characters")
        body = read_body(environ, limit)
        reply: dict[str, t.Any] = {}
        details = {
            "request_id": environ[REQUEST_ID_KEY],
            "custom_attributes": attributes,
            "target_variant": environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_VARIANT"),
            "inference_id": environ.get(_ID_ENVIRON_KEYS[0]),
            "reply": reply,
        }
        arrived = environ[ARRIVED_KEY]
        session_id = environ.get("HTTP_X_AMZN_SAGEMAKER_SESSION_ID")
        # Only a JSON body can be a session request: others are not looked into.
        kind = (session_request_type(body, config.max_decoded_bytes)
                if negotiated.content_type.endswith("json") else None)
        if session_id is not None or kind is not None:
            return in_session(pipeline, environ, body, negotiated, details, session_id, kind)
        payload, media_type = runtime.call(
            pipeline.invoke, body, negotiated, EnvironHeaders(environ),
            arrived + runtime.deadline_seconds, details, started=arrived,
        )
        return payload, media_type, reply

    def in_session(pipeline: Pipeline, environ: dict[str, t.Any], body: bytes,
                   negotiated: t.Any, details: dict[str, t.Any], session_id: str | None,
                   kind: str | None) -> tuple[t.Any, str, dict[str, t.Any]]:
        """A request that opens, uses or closes a stateful session
        (:mod:`serving.contract.sessions`)."""
        if sessions is None:
            raise errors.BadRequest("stateful sessions are off: set "
                                    "SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true to open one")
        if session_id is not None:
            check_session_id(session_id)
        headers = EnvironHeaders(environ)
        arrived = environ[ARRIVED_KEY]
        reply = details["reply"]
        if kind == NEW_SESSION:
            session = sessions.open()
            try:
                runtime.call(pipeline.session_hook, "open_session_fn", session, headers,
                             details, started=arrived)
                if session.state:
                    sessions.save(session)
            except BaseException:
                sessions.close(session.id)
                raise
            reply["headers"] = {NEW_HEADER: f"{session.id}; Expires={session.expires_text}"}
            return (app.json.dumps({"session_id": session.id, "expires": session.expires_text})
                    .encode() + b"\n", "application/json", reply)
        if session_id is None or session_id == NEW_SESSION:
            raise errors.BadRequest(
                f"{'CLOSE' if kind == CLOSE else 'this request'} needs an open session's id in "
                f"X-Amzn-SageMaker-Session-Id (NEW_SESSION goes with "
                f'{{"requestType": "NEW_SESSION"}})')
        # The session's lock is waited for at most --session-wait (then 429), and the
        # model's deadline counts from when it is held: a request that waited behind
        # another of its session never reaches the model with its time spent, so it
        # cannot run past its deadline and make the worker retire.
        if kind == CLOSE:
            with sessions.use(session_id) as session:
                runtime.call(pipeline.session_hook, "close_session_fn", session, headers,
                             details, started=time.monotonic())
            sessions.close(session_id)
            reply["headers"] = {CLOSED_HEADER: session_id}
            return (app.json.dumps({"closed_session_id": session_id}).encode() + b"\n",
                    "application/json", reply)
        with sessions.use(session_id) as session:
            details["session"] = session
            held = time.monotonic()
            payload, media_type = runtime.call(pipeline.invoke, body, negotiated, headers,
                                               held + runtime.deadline_seconds, details,
                                               started=held)
        return payload, media_type, reply

    def response_of(payload: t.Any, media_type: str, reply: dict[str, str], request_id: str,
                    event_stream: bool = False) -> Response:
        """The answer to an invocation, from what :func:`predict` returned.

        :param event_stream: frame the answer as AWS event-stream messages.
        """
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
            response = Response(payload, status=reply.get("status", 200),
                                content_type=media_type)
        if "custom_attributes" in reply:
            response.headers[CUSTOM_ATTRIBUTES_HEADER] = reply["custom_attributes"]
        response.headers.update(reply.get("headers", ()))
        return response

    def invoke(pipeline: Pipeline, event_stream: bool = False) -> Response:
        """Answer one invocation with ``pipeline`` (a Flask view's answer)."""
        environ = request.environ
        payload, media_type, reply = predict(pipeline, environ)
        return response_of(payload, media_type, reply, environ[REQUEST_ID_KEY], event_stream)

    def streamed(stream: Stream, request_id: str, framed: bool = False) -> t.Iterator[bytes]:
        """The chunks of a streamed answer, each pulled on a prediction thread under a
        deadline of its own (the request deadline, from when the chunk was asked for).

        A failure after the first chunk cannot change the status: in event-stream framing
        it is a ModelStreamError message; otherwise the connection closes without the
        chunked body's end, so the client sees the answer cut short.
        """
        part = eventstream.payload_part if framed else bytes
        sent = 0
        try:
            if stream.first:
                yield part(stream.first)
            sent = 1
            while True:
                token = logs.request_id.set(request_id)  # the request context is gone
                try:
                    chunk = runtime.call(next, stream.rest, None)
                except Exception as exc:
                    code = ("ModelInvocationTimeExceeded"
                            if isinstance(exc, errors.DeadlineExceeded) else "ModelError")
                    log.error("the streamed answer broke off after %d chunk(s): %s", sent,
                              exc if isinstance(exc, errors.ServingError)
                              else f"{type(exc).__name__}: {exc}",
                              exc_info=not isinstance(exc, errors.ServingError))
                    if framed:
                        message = exc.message if isinstance(exc, errors.ServingError) \
                            else f"the model raised {type(exc).__name__}"
                        yield eventstream.model_stream_error(message, code)
                        return
                    raise errors.StreamAborted(code) from exc
                finally:
                    logs.request_id.reset(token)
                if chunk is None:
                    return
                if chunk:
                    yield part(chunk)
                    sent += 1
        finally:
            stream.close()

    def invoke_for_protocol(pipeline: Pipeline, body: bytes, content_type: str,
                            accept: str) -> tuple[bytes, str]:
        """One invocation a protocol's route made up (KServe's): its body, Content-Type and
        Accept, under the request's deadline; the answer whole."""
        environ = request.environ
        if not pipeline.ready:
            raise errors.ServiceUnavailable("the model is still loading")
        negotiated = negotiate(content_type, accept, pipeline.decoders, pipeline.encoders,
                               config.default_accept)
        arrived = environ[ARRIVED_KEY]
        details = {"request_id": environ[REQUEST_ID_KEY], "reply": {}}
        payload, media_type = runtime.call(
            pipeline.invoke, body, negotiated, EnvironHeaders(environ),
            arrived + runtime.deadline_seconds, details, started=arrived)
        if isinstance(payload, Stream):
            payload.close()
            raise errors.ModelError("the model streamed its answer, which a KServe "
                                    "prediction cannot be", stage="encode")
        return payload, media_type

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
                payload, media_type, reply = predict(model(), environ)
                if isinstance(payload, str):
                    payload = payload.encode("utf-8")
                if not isinstance(payload, (bytes, bytearray)) or "status" in reply:
                    # Streamed (werkzeug frames it), or a status a handler set.
                    return respond(environ, start_response, rule, response_of(
                        payload, media_type, reply, environ[REQUEST_ID_KEY]))
            except errors.ServingError as exc:
                return respond(environ, start_response, rule, render(exc, environ))
            except Exception as exc:  # as Flask's handler for bugs answers them
                return respond(environ, start_response, rule, render_bug(exc, environ))
            headers = [("Content-Type", media_type), ("Content-Length", str(len(payload)))]
            if "custom_attributes" in reply:
                headers.append((CUSTOM_ATTRIBUTES_HEADER, reply["custom_attributes"]))
            headers.extend(reply.get("headers", {}).items())
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
