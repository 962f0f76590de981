"""The Flask app: routes, request limits and error rendering. No decoding, no model logic."""

from __future__ import annotations

import functools
import logging
import os
import time
import typing as t

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import errors, logs
from serving.config import Config
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import NO_ROUTE, Metrics
from serving.negotiation import acceptable_types, parse_media_type
from serving.pipeline import Pipeline, valid_custom_attributes
from serving.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

#: The Content-Type a request without one is taken to have.
DEFAULT_CONTENT_TYPE = "application/json"
#: ``BatchStrategy`` reported to batch transform: it may pack many records into one request.
BATCH_STRATEGY = "MultiRecord"
#: WSGI environ key where the server puts when a request arrived (``time.monotonic()``):
#: the request deadline counts from there, not from when a thread got to it.
ARRIVED_KEY = "serving.arrived"
#: Where a request's id comes from: the first of these headers the client sent (SageMaker
#: sends the first with every invocation), else one is made up. Answers carry it in
#: ``X-Request-Id``.
REQUEST_ID_HEADERS = ("X-Amzn-SageMaker-Inference-Id", "X-Request-Id", "X-Amzn-RequestId")
RESPONSE_ID_HEADER = "X-Request-Id"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
#: The OpenAPI description of every route, kept beside this module and served as it is.
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


def request_id_of(header: t.Callable[[str], str | None]) -> str:
    """The id of a request whose headers ``header(name)`` reads: the caller's, when it is
    short visible ASCII, else a new one."""
    for name in REQUEST_ID_HEADERS:
        value = header(name)
        if value is not None:
            if logs.valid_request_id(value):
                return value
            break  # a bad id is replaced, never echoed into logs and headers
    return logs.new_request_id()


def create_app(config: Config, pipeline: Pipeline, runtime: Runtime | None = None,
               metrics: Metrics | None = None) -> Flask:
    """Build the app serving ``pipeline``.

    :param runtime: runs each request under its deadline; by default one made
        from ``config`` (threads start in the process that first uses it).
    :param metrics: where requests are counted (``serve`` makes it for all its
        workers); by default, with ``config.metrics``, metrics of this process only.
    """
    runtime = runtime or Runtime(config.concurrency, config.deadline_seconds)
    if metrics is None and config.metrics:
        metrics = Metrics(content_types=pipeline.input_types)
    if metrics is not None:
        pipeline.observe_stage = metrics.stage
        if pipeline.batcher is not None:
            pipeline.batcher.on_batch = metrics.batch
    app = Flask("serving", static_folder=None)  # no static files: no /static route
    app.json.sort_keys = False
    limit = config.max_payload_bytes
    output_types = tuple(pipeline.output_types) if pipeline.output_types is not None else None
    metrics_port = str(config.metrics_port) if config.metrics_port is not None else None
    with open(OPENAPI_PATH, "rb") as spec:
        openapi = spec.read()

    def render(error: errors.ServingError) -> Response:
        body = error.to_dict()
        body["request_id"] = logs.request_id.get() or None
        response = app.json.response(body)
        response.status_code = error.status_code
        response.headers.update(error.headers)
        return response

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
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = f"internal error: {type(error).__name__}"
        if config.debug_errors:
            message += f": {error}"
        return render(errors.ServingError(message))

    @app.before_request
    def start_request() -> None:
        g.arrived = request.environ.get(ARRIVED_KEY) or time.monotonic()
        g.request_id = request_id_of(request.headers.get)
        # Reset in teardown: the HTTP thread serves other requests next.
        g.id_token = logs.request_id.set(g.request_id)
        if metrics is not None:
            metrics.in_flight.inc()
            g.counted = True
        if metrics_port is not None and (request.path == "/metrics") != (
                request.environ.get("SERVER_PORT") == metrics_port):
            # /metrics only on its own port, and nothing else there.
            raise errors.NotFound(f"no route {request.method} {request.path}")

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers[RESPONSE_ID_HEADER] = g.get("request_id") or ""
        elapsed = time.monotonic() - g.get("arrived", time.monotonic())
        route = request.url_rule.rule if request.url_rule is not None else NO_ROUTE
        status = response.status_code
        if metrics is not None:
            header = request.headers.get("Content-Type")
            try:
                content_type = content_type_of(header) if header else None
            except ValueError:
                content_type = "invalid"
            metrics.request_done(route, status, content_type, elapsed)
            if route.endswith("/invocations"):
                metrics.bodies(request.content_length or 0, response.content_length)
        # /ping comes every few seconds from the host: keep it out of INFO logs.
        level = logging.DEBUG if request.path == "/ping" else logging.INFO
        if access_log.isEnabledFor(level):
            log_access_line(level, '%s "%s %s" %d %.1fms', request.remote_addr, request.method,
                            request.full_path.rstrip("?"), status, elapsed * 1000,
                            fields={"status": status, "latency_ms": round(elapsed * 1000, 3),
                                    "method": request.method, "path": request.path,
                                    "remote": request.remote_addr})
        return response

    @app.teardown_request
    def end_request(_: BaseException | None) -> None:
        if g.pop("counted", False):
            metrics.in_flight.dec()  # type: ignore[union-attr]
        token = g.pop("id_token", None)
        if token is not None:
            logs.request_id.reset(token)

    def require_ready() -> None:
        if not pipeline.ready:
            raise errors.ServiceUnavailable("the model is still loading")

    @app.get("/ping")
    def ping() -> Response:
        require_ready()
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return app.json.response({
            "MaxConcurrentTransforms": config.workers,
            "BatchStrategy": BATCH_STRATEGY,
            "MaxPayloadInMB": config.max_payload_mb if config.max_payload_mb % 1
            else int(config.max_payload_mb),
        })

    @app.post("/invocations")
    @app.post("/endpoints/<name>/invocations")
    def invocations(name: str | None = None) -> Response:
        require_ready()
        header = request.headers.get("Content-Type")
        try:
            content_type = content_type_of(header) if header else DEFAULT_CONTENT_TYPE
        except ValueError:
            raise errors.UnsupportedMediaType(header or "", pipeline.input_types or []) from None
        if pipeline.input_types is not None and content_type not in pipeline.input_types:
            raise errors.UnsupportedMediaType(content_type, pipeline.input_types)
        accept_header = request.headers.get("Accept")
        accepts = accepted(accept_header, output_types, config.default_accept)
        if not accepts:
            raise errors.NotAcceptable(accept_header or "", pipeline.output_types or [])
        attributes = request.headers.get(CUSTOM_ATTRIBUTES_HEADER)
        if attributes is not None and not valid_custom_attributes(attributes):
            raise errors.BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} must be 1-1024 visible ASCII "
                                    f"characters")
        body = read_body(limit)
        reply: dict[str, str] = {}
        details = {
            "request_id": g.request_id,
            "custom_attributes": attributes,
            "target_variant": request.headers.get(TARGET_VARIANT_HEADER),
            "inference_id": request.headers.get(REQUEST_ID_HEADERS[0]),
            "reply": reply,
        }
        payload, media_type = runtime.call(
            pipeline.invoke, body, content_type, accepts, request.headers,
            g.arrived + runtime.deadline_seconds, details, started=g.arrived,
        )
        response = Response(payload, status=200, content_type=media_type)
        if "custom_attributes" in reply:
            response.headers[CUSTOM_ATTRIBUTES_HEADER] = reply["custom_attributes"]
        return response

    if metrics is not None:
        @app.get("/metrics")
        def prometheus_metrics() -> Response:
            return Response(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    def openapi_spec() -> Response:
        return Response(openapi, content_type="application/json")

    return app


# Clients send the same few Content-Type and Accept headers again and again: parse each
# once. Bounded, so that a client varying them costs memory no more than this.
@functools.lru_cache(maxsize=512)
def content_type_of(header: str) -> str:
    return parse_media_type(header).essence


@functools.lru_cache(maxsize=512)
def accepted(header: str | None, offered: tuple[str, ...] | None, default: str) -> list[str]:
    """:func:`acceptable_types`, cached: callers must not change the list."""
    return acceptable_types(header, offered, default)


def log_access_line(level: int, message: str, *args: object,
                    fields: dict[str, t.Any] | None = None) -> None:
    """One access line: the record ``logging.log`` makes, without its walk up the stack to
    find the caller (a third of its cost, paid on every request; the caller is known).

    :param fields: record attributes for structured logs (status, latency_ms, …).
    """
    access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, message, args,
                                            None, extra=fields))


def read_body(limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes.

    With a Content-Length the size is checked before anything is read; a
    chunked body is read up to the limit and refused as soon as it passes it.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise errors.PayloadTooLarge(limit, length)
    # One read of at most limit + 1 bytes: the stream stops at Content-Length, or
    # at the end of a chunked body, so anything past the limit means 413.
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise errors.PayloadTooLarge(limit)
    if length is not None and len(body) < length:
        # The client closed its side early: predicting on part of a body is never right.
        raise errors.BadRequest(
            f"the body ended after {len(body)} of the {length} bytes its Content-Length declared"
        )
    return body
