"""The Flask app: routes, request limits and error rendering. No decoding, no model logic."""

from __future__ import annotations

import functools
import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import errors
from serving.config import Config
from serving.negotiation import acceptable_types, parse_media_type
from serving.pipeline import Pipeline
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


def create_app(config: Config, pipeline: Pipeline, runtime: Runtime | None = None) -> Flask:
    """Build the app serving ``pipeline``.

    :param runtime: runs each request under its deadline; by default one made
        from ``config`` (threads start in the process that first uses it).
    """
    runtime = runtime or Runtime(config.concurrency, config.deadline_seconds)
    app = Flask("serving")
    app.json.sort_keys = False
    limit = config.max_payload_bytes
    output_types = tuple(pipeline.output_types) if pipeline.output_types is not None else None

    def render(error: errors.ServingError) -> Response:
        response = app.json.response(error.to_dict())
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
    def start_timer() -> None:
        g.started = time.perf_counter()
        g.arrived = time.monotonic()

    @app.after_request
    def log_access(response: Response) -> Response:
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        # /ping comes every few seconds from the host: keep it out of INFO logs.
        level = logging.DEBUG if request.path == "/ping" else logging.INFO
        if access_log.isEnabledFor(level):
            log_access_line(level, '%s "%s %s" %d %.1fms', request.remote_addr, request.method,
                            request.full_path.rstrip("?"), response.status_code, elapsed_ms)
        return response

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
        body = read_body(limit)
        arrived = request.environ.get(ARRIVED_KEY, g.arrived)
        payload, media_type = runtime.call(
            pipeline.invoke, body, content_type, accepts, request.headers,
            arrived + runtime.deadline_seconds, started=arrived,
        )
        return Response(payload, status=200, content_type=media_type)

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


def log_access_line(level: int, message: str, *args: object) -> None:
    """One access line: the record ``logging.log`` makes, without its walk up the stack to
    find the caller (a third of its cost, paid on every request; the caller is known)."""
    access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, message, args,
                                            None))


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
