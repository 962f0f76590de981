"""What every wire protocol's adapter is, and what it is given.

An adapter (:class:`Protocol`) declares its routes, turns a request into an
:class:`~serving.contract.invocation.Invocation`, and an
:class:`~serving.contract.invocation.Answer` or an error into its wire format and error
body. It knows no model, no limit and no negotiation rule: the invocation service
(:attr:`Server.invocations`) keeps those. The app (:mod:`serving.http.app`) mounts the
adapters :data:`serving.protocols.PROTOCOLS` lists; a new protocol is one module and one
line there.

Here too: the per-request state every adapter reads from the WSGI environ (when the request
arrived, its id), reading a body under the payload limit, and an answer as a response.
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t

from flask import Blueprint, Response
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_content_length, get_input_stream

from serving import errors
from serving.contract.invocation import Answer, Invocation, Invocations
from serving.contract.streams import Stream
from serving.runtime import logs

if t.TYPE_CHECKING:
    from serving.config import Config
    from serving.contract.limits import Limits
    from serving.contract.models import Models
    from serving.runtime.metrics import Metrics

__all__ = ["ARRIVED_KEY", "Beside", "Direct", "Protocol", "REQUEST_ID_HEADERS", "REQUEST_ID_KEY",
           "RESPONSE_ID_HEADER", "Server", "answer_response", "read_body", "request_id_of",
           "serves_archives", "stream_error_code"]

#: WSGI environ key where the server puts when a request arrived (``time.monotonic()``):
#: the request deadline counts from there, not from when a thread got to it.
ARRIVED_KEY = "serving.arrived"
#: WSGI environ key of the request's id.
REQUEST_ID_KEY = "serving.request_id"
#: Where a request's id comes from: the first of these headers the client sent (SageMaker
#: sends the first with every invocation), else one is made up. Answers carry it in
#: ``X-Request-Id``.
REQUEST_ID_HEADERS = ("X-Amzn-SageMaker-Inference-Id", "X-Request-Id", "X-Amzn-RequestId")
ID_ENVIRON_KEYS = tuple("HTTP_" + h.upper().replace("-", "_") for h in REQUEST_ID_HEADERS)
RESPONSE_ID_HEADER = "X-Request-Id"

class Beside(t.Protocol):
    """A protocol's own server in a worker (:meth:`Protocol.beside`)."""

    def stop(self, grace: float) -> threading.Event:
        """Take nothing new; an event set once what is in flight has finished (at most
        ``grace`` seconds)."""
        ...


#: A request the direct path answers without Flask (see :class:`~serving.http.app.
#: InvocationsPath`): its route's rule (the metrics' label) and what answers it.
Direct = t.Tuple[str, t.Callable[[], Answer]]


def request_id_of(values: t.Iterable[str | None]) -> str:
    """The id of a request, given the values of its :data:`REQUEST_ID_HEADERS` (``None``
    for those it lacks): the caller's, when it is short visible ASCII, else a new one."""
    for value in values:
        if value is not None:
            if logs.valid_request_id(value):
                return value
            break  # a bad id is replaced, never echoed into logs and headers
    return logs.new_request_id()


@dataclasses.dataclass
class Server:
    """What an adapter is given: the settings, the models, the invocation service, the
    limits and the metrics (``None``: off)."""

    config: Config
    models: Models
    invocations: Invocations
    limits: Limits
    metrics: Metrics | None
    #: What checks every request before it is routed, whatever port or transport carries
    #: it (the protocols' :meth:`Protocol.guard`, gathered once the adapters are made):
    #: TorchServe's inference key, on a model store's server.
    guards: list[t.Callable[[dict[str, t.Any]], None]] = dataclasses.field(
        default_factory=list)

    def body(self, environ: dict[str, t.Any]) -> bytes:
        """The request's body, under the payload limit."""
        return read_body(environ, self.limits.max_payload_bytes)

    def invocation(self, environ: dict[str, t.Any], body: bytes, content_type: str | None,
                   accept: str | None, **more: t.Any) -> Invocation:
        """An invocation of ``body`` made from the WSGI request ``environ``: its headers,
        its id, when it arrived."""
        return Invocation(body, content_type, accept, EnvironHeaders(environ),
                          request_id=environ[REQUEST_ID_KEY], arrived=environ[ARRIVED_KEY],
                          **more)


class Protocol:
    """One wire protocol's adapter (see the module). Every hook but :meth:`routes` is
    optional."""

    #: Its name, as the logs and the docs say it.
    name = ""
    #: Path prefixes whose errors this protocol writes in its own body, whatever route
    #: (or none) they reached.
    error_paths: tuple[str, ...] = ()
    #: Its routes (Flask rules) that are invocations: the metrics count their body sizes.
    invocation_rules: frozenset[str] = frozenset()
    #: Paths a host polls (health checks): their access lines are DEBUG, not INFO.
    quiet_paths: frozenset[str] = frozenset()

    def __init__(self, server: Server) -> None:
        self.server = server

    def routes(self) -> Blueprint | None:
        """Its routes on the main port (``None``: none, with these settings)."""
        raise NotImplementedError

    def direct(self, environ: dict[str, t.Any]) -> Direct | None:
        """A request the direct path answers (the hot invocation routes), else ``None``."""
        return None

    def error_body(self, error: errors.ServingError, request_id: str | None) -> dict[str, t.Any]:
        """The body of ``error`` on this protocol's paths."""
        body = error.to_dict()
        body["request_id"] = request_id
        return body

    def own_port(self) -> tuple[str, t.Callable[..., t.Iterable[bytes]]] | None:
        """A port this protocol answers everything on, and the WSGI app that does."""
        return None

    def beside(self) -> Beside | None:
        """A server of its own this protocol runs in each worker, started now (gRPC); the
        host calls it in the worker, after fork, and stops it when the worker stops.
        ``None``: none, with these settings."""
        return None

    def guard(self) -> t.Callable[[dict[str, t.Any]], None] | None:
        """What checks every request of the main port before it is routed (raising a
        :class:`~serving.errors.ServingError` refuses it), or ``None``."""
        return None


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


def answer_response(answer: Answer, invocations: Invocations, request_id: str) -> Response:
    """The response carrying ``answer``: its body, or its chunks streamed (HTTP chunked);
    a status a TorchServe handler set; the answer's headers.

    A failure after the first chunk cannot change the status: the connection closes
    without the chunked body's end, so the client sees the answer cut short.
    """
    if isinstance(answer.body, Stream):
        response = Response(_chunked(answer.body, invocations, request_id), status=200,
                            content_type=answer.media_type)
    else:
        response = Response(answer.body, status=answer.status or 200,
                            content_type=answer.media_type)
    response.headers.update(answer.headers)
    return response


def _chunked(stream: Stream, invocations: Invocations, request_id: str) -> t.Iterator[bytes]:
    try:
        yield from invocations.chunks(stream, request_id)
    except Exception as exc:
        raise errors.StreamAborted(stream_error_code(exc)) from exc


def stream_error_code(exc: BaseException) -> str:
    """How a streamed answer that broke off is named to the client (SageMaker's codes)."""
    return "ModelInvocationTimeExceeded" if isinstance(exc, errors.DeadlineExceeded) \
        else "ModelError"


def serves_archives(server: Server) -> bool:
    """Whether ``server`` serves TorchServe model archives (a model store, or a .mar)."""
    return server.config.model_store is not None or \
        any(p.archive is not None for p in server.models.loaded())
