"""The Flask app: it mounts the protocols' adapters (:data:`serving.protocols.PROTOCOLS`) over
one invocation service, and keeps what every request goes through whatever its protocol:
its id, the access line, the metrics, and its error rendered in its protocol's body. It
names no protocol, decodes nothing and holds no model logic."""

from __future__ import annotations

import json
import logging
import os
import time
import typing as t

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

from serving import errors
from serving.config import Config
from serving.contract.invocation import Answer, Invocations
from serving.contract.limits import Limits
from serving.contract.models import DEFAULT_MODEL, Models
from serving.contract.negotiation import content_type_of
from serving.contract.pipeline import Pipeline
from serving.contract.sessions import session_store
from serving.protocols import adapters
from serving.protocols.base import (
    ARRIVED_KEY,
    ID_ENVIRON_KEYS,
    REQUEST_ID_HEADERS,
    REQUEST_ID_KEY,
    RESPONSE_ID_HEADER,
    Direct,
    Protocol,
    Server,
    answer_response,
    read_body,
    request_id_of,
)
from serving.runtime import logs
from serving.runtime.executor import Runtime
from serving.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.runtime.metrics import NO_ROUTE, Metrics

__all__ = ["ARRIVED_KEY", "InvocationsPath", "REQUEST_ID_HEADERS", "REQUEST_ID_KEY",
           "RESPONSE_ID_HEADER", "create_app", "read_body", "request_id_of", "route_of"]

log = logging.getLogger(__name__)
access_log = logs.access_log

#: WSGI environ key of what teardown undoes (the log context's request id).
_TOKEN_KEY = "serving.id_token"
#: The OpenAPI description of every route, kept beside this module and served as it is.
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


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
    invocations = Invocations(models, runtime, limits, default_accept=config.default_accept,
                              sessions=session_store(config), metrics=metrics)
    server = Server(config, models, invocations, limits, metrics)
    protocols = adapters(server)
    server.guards.extend(guard for guard in (p.guard() for p in protocols) if guard is not None)
    app = Flask("serving", static_folder=None)  # no static files: no /static route
    app.json.sort_keys = False
    # The one invocation service: the host's other doors (a worker's WebSocket streams)
    # invoke through it too.
    app.extensions["serving.invocations"] = invocations
    # The protocols' own servers (gRPC) start in each worker, by the host, after fork.
    app.extensions["serving.protocols"] = protocols
    door = FrontDoor(app, config, metrics, protocols, server.guards)
    app.register_error_handler(errors.ServingError, lambda error: door.render(error))
    app.register_error_handler(HTTPException, door.on_http_exception)
    app.register_error_handler(Exception, lambda error: door.render_bug(error))
    app.before_request(door.before_request)
    app.after_request(door.after_request)
    app.teardown_request(lambda _: door.end(request.environ))
    for protocol in protocols:
        routes = protocol.routes()
        if routes is not None:
            app.register_blueprint(routes)
    if metrics is not None:
        app.add_url_rule("/metrics", "prometheus_metrics", lambda: Response(
            metrics.exposition(), content_type=METRICS_CONTENT_TYPE))
    openapi = openapi_description(models.multi)
    app.add_url_rule("/openapi.json", "openapi_spec",
                     lambda: Response(openapi, content_type="application/json"))
    app.wsgi_app = InvocationsPath(app.wsgi_app, door)  # type: ignore[method-assign]
    return app


class FrontDoor:
    """What every request goes through, Flask's or the direct path's (:class:`InvocationsPath`):
    each reads the WSGI environ once and keeps its state there. Its error is written in the
    body of the protocol whose paths it reached."""

    def __init__(self, app: Flask, config: Config, metrics: Metrics | None,
                 protocols: list[Protocol],
                 guards: list[t.Callable[[dict[str, t.Any]], None]]) -> None:
        self.app = app
        self.debug_errors = config.debug_errors
        self.metrics = metrics
        self.metrics_port = str(config.metrics_port) if config.metrics_port is not None \
            else None
        self.protocols = protocols
        self.default_protocol = protocols[0]
        self.invocation_rules = frozenset().union(*(p.invocation_rules for p in protocols))
        self.quiet_paths = frozenset().union(*(p.quiet_paths for p in protocols))
        self.by_path = [(path, p) for p in protocols for path in p.error_paths]
        self.directs = [p for p in protocols if type(p).direct is not Protocol.direct]
        self.guards = guards
        ports = [port for port in (p.own_port() for p in protocols) if port is not None]
        self.own_ports = dict(ports)

    # -- errors ------------------------------------------------------------------------

    def render(self, error: errors.ServingError,
               environ: dict[str, t.Any] | None = None) -> Response:
        environ = request.environ if environ is None else environ
        path = environ.get("PATH_INFO", "")
        protocol = next((p for prefix, p in self.by_path
                         if path == prefix or (prefix.endswith("/") and path.startswith(prefix))),
                        self.default_protocol)
        body = protocol.error_body(error, environ.get(REQUEST_ID_KEY)
                                   or logs.request_id.get() or None)
        response = self.app.json.response(body)
        response.status_code = error.status_code
        response.headers.update(error.headers)
        return response

    def render_bug(self, error: Exception, environ: dict[str, t.Any] | None = None) -> Response:
        environ = request.environ if environ is None else environ
        log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"))
        message = f"internal error: {type(error).__name__}"
        if self.debug_errors:
            message += f": {error}"
        return self.render(errors.ServingError(message), environ)

    def on_http_exception(self, error: HTTPException) -> Response:
        if error.code == 405:
            allowed = error.valid_methods or []  # type: ignore[attr-defined]
            return self.render(errors.MethodNotAllowed(request.method, request.path, allowed))
        if error.code == 404:
            return self.render(errors.NotFound(f"no route {request.method} {request.path}"))
        code = error.code or 500
        kind = errors.ClientError if 400 <= code < 500 else errors.ServingError
        return self.render(kind(error.description, status_code=code))

    # -- a request's life --------------------------------------------------------------

    def start(self, environ: dict[str, t.Any]) -> None:
        environ.setdefault(ARRIVED_KEY, time.monotonic())
        rid = environ[REQUEST_ID_KEY] = request_id_of(environ.get(k) for k in ID_ENVIRON_KEYS)
        # Reset when the request ends: the HTTP thread serves other requests next.
        environ[_TOKEN_KEY] = logs.request_id.set(rid)

    def finish(self, environ: dict[str, t.Any], route: str, status: int,
               headers: t.Any, body_length: int | None) -> None:
        """Count and log the answer, and give it the request's id (``headers``: a list of
        pairs, or werkzeug's Headers)."""
        if isinstance(headers, list):
            headers.append((RESPONSE_ID_HEADER, environ.get(REQUEST_ID_KEY, "")))
        else:
            headers[RESPONSE_ID_HEADER] = environ.get(REQUEST_ID_KEY, "")
        elapsed = time.monotonic() - environ.get(ARRIVED_KEY, time.monotonic())
        metrics = self.metrics
        if metrics is not None:
            header = environ.get("CONTENT_TYPE")
            try:
                content_type = content_type_of(header) if header else None
            except ValueError:
                content_type = "invalid"
            metrics.request_done(route, status, content_type, elapsed)
            if route in self.invocation_rules:
                metrics.bodies(get_content_length(environ) or 0, body_length)
        # A health check comes every few seconds from the host: keep it out of INFO logs.
        path = environ.get("PATH_INFO", "")
        level = logging.DEBUG if path in self.quiet_paths else logging.INFO
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
            logs.access_line(level, '%s "%s %s" %d %.1fms', remote, method, target, status,
                            elapsed * 1000,
                            fields={"status": status, "latency_ms": round(elapsed * 1000, 3),
                                    "method": method, "path": path, "remote": remote})

    def end(self, environ: dict[str, t.Any]) -> None:
        token = environ.pop(_TOKEN_KEY, None)
        if token is not None:
            logs.request_id.reset(token)

    def before_request(self) -> None:
        environ = request.environ
        self.start(environ)
        if self.metrics_port is not None:
            path = environ.get("PATH_INFO")
            if (path == "/metrics") != (environ.get("SERVER_PORT") == self.metrics_port):
                # /metrics only on its own port, and nothing else there.
                raise errors.NotFound(f"no route {environ.get('REQUEST_METHOD')} {path}")

    def after_request(self, response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        self.finish(req.environ, rule.rule if rule is not None else NO_ROUTE,
                    response.status_code, response.headers, response.content_length)
        return response

    # -- the direct path ---------------------------------------------------------------

    def direct_route(self, environ: dict[str, t.Any]) -> Direct | None:
        for protocol in self.directs:
            found = protocol.direct(environ)
            if found is not None:
                return found
        return None

    def refused(self, environ: dict[str, t.Any],
                start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes] | None:
        """The answer refusing a request a protocol's guard stops (its key missing), else
        ``None``."""
        try:
            for guard in self.guards:
                guard(environ)
            return None
        except errors.ServingError as exc:
            self.start(environ)
            try:
                route = route_of(self.app, environ.get("REQUEST_METHOD", ""),
                                 environ.get("PATH_INFO", ""))
                return self.respond(environ, start_response, route, self.render(exc, environ))
            finally:
                self.end(environ)

    def invoke_directly(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any],
                        rule: str, answer: t.Callable[[], Answer]) -> t.Iterable[bytes]:
        """An invocation without Flask's request and response objects (see
        :class:`InvocationsPath`): the same steps as the view and the hooks around it."""
        self.start(environ)
        try:
            try:
                got = answer()
                payload = got.body
                if not isinstance(payload, (bytes, bytearray)) or got.status is not None:
                    # Streamed (werkzeug frames it), or a status a handler set.
                    invocations = self.app.extensions["serving.invocations"]
                    return self.respond(environ, start_response, rule, answer_response(
                        got, invocations, environ[REQUEST_ID_KEY]))
            except errors.ServingError as exc:
                return self.respond(environ, start_response, rule, self.render(exc, environ))
            except Exception as exc:  # as Flask's handler for bugs answers them
                return self.respond(environ, start_response, rule,
                                    self.render_bug(exc, environ))
            headers = [("Content-Type", got.media_type), ("Content-Length", str(len(payload)))]
            headers.extend(got.headers.items())
            self.finish(environ, rule, 200, headers, len(payload))
            start_response("200 OK", headers)
            return (payload,)
        finally:
            self.end(environ)

    def respond(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any],
                rule: str, response: Response) -> t.Iterable[bytes]:
        self.finish(environ, rule, response.status_code, response.headers,
                    response.content_length)
        return response(environ, start_response)


class InvocationsPath:
    """WSGI middleware: invocations (``POST /invocations``, TorchServe's ``/predictions``:
    what the protocols' :meth:`~serving.protocols.base.Protocol.direct` claim) straight to
    the invocation service, everything else to Flask; a protocol's own port (TorchServe's
    management API) to its app; a protocol's guard (TorchServe's key) before anything.

    Why: at small models most of a request's CPU was Flask's, not the model's: the
    request and app contexts, URL matching, the Request and Response objects, signals
    (py-spy, 32 clients, the peers' MLP: half the GIL-held samples under
    ``Flask.wsgi_app``). The direct path does what the route and its hooks do, in the
    same order, on the environ: request id, the same errors rendered by the same code,
    metrics, the access line; the answer is the same status, headers and body. Every
    test of these routes goes through it, Flask's test client's included, since this is
    Flask's own middleware slot (``app.wsgi_app``).
    """

    def __init__(self, flask_app: t.Callable[..., t.Iterable[bytes]], door: FrontDoor) -> None:
        self.flask_app = flask_app
        self.door = door
        #: With /metrics on a port of its own, nothing else is answered there: Flask's
        #: hook refuses it, so requests on that port go through Flask.
        self.metrics_port = door.metrics_port
        self.own_ports = door.own_ports
        self.guarded = bool(door.guards)

    def __call__(self, environ: dict[str, t.Any],
                 start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        port = environ.get("SERVER_PORT")
        if self.own_ports and port in self.own_ports:
            return self.own_ports[port](environ, start_response)
        if self.metrics_port is None or port != self.metrics_port:
            door = self.door
            if self.guarded:
                refused = door.refused(environ, start_response)
                if refused is not None:
                    return refused
            found = door.direct_route(environ)
            if found is not None:
                return door.invoke_directly(environ, start_response, *found)
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
