"""SageMaker's bidirectional streaming: a WebSocket per stream, over wsproto.

SageMaker's sidecar opens a WebSocket to the container at ``/invocations-bidirectional-stream``,
or at the path a client named in ``X-Amzn-SageMaker-Model-Invocation-Path``, with the query of
``X-Amzn-SageMaker-Model-Query-String``. That path is served whether or not the headers come
with the upgrade (SageMaker documents that the sidecar connects there, not that it passes
them on): a WebSocket upgrade at any path of SageMaker's pattern is a stream, its query the
URL's when the header is absent. Each client ``PayloadPart`` is one data
frame: text for ``DataType=UTF8``, binary otherwise; a run of ``PARTIAL`` parts is one
fragmented message. The container's frames go back the same way, and a Close frame from
it reaches the client as a ``ModelStreamError`` with its code and reason.

The worker's loop reads the upgrade request like any other (llhttp,
:mod:`serving.hosts.gunicorn.http1`) and hands the connection to a **thread of its own**
(:func:`serve_stream`), at most ``SERVING_MAX_STREAMS`` a worker; the HTTP threads, and so
``/ping`` and ``/invocations``, are never held by a stream. From there:

- the handshake is wsproto's (``initiate_upgrade_connection``: method, ``Connection``,
  ``Upgrade``, version 13, a key), with RFC 6455 4.2.1's check that the key is 16 bytes in
  base64 on top; a refusal is our JSON error (400, 426 with ``Sec-WebSocket-Version``);
- frames are wsproto's: it reassembles nothing, so fragments are joined here, under
  ``SERVING_STREAM_MAX_MESSAGE_MB`` counted as they arrive (1009 past it), and under
  ``SERVING_STREAM_MAX_TOTAL_MB`` for the stream (1008); it checks UTF-8 (1007) and
  framing (1002) itself;
- pings from the client are answered here, at once; the server pings every
  ``SERVING_STREAM_PING_INTERVAL`` seconds and closes (1008) when
  ``SERVING_STREAM_MISSED_PINGS`` in a row went unanswered; a stream with no message for
  ``SERVING_STREAM_IDLE_TIMEOUT`` seconds, or open for ``SERVING_STREAM_MAX_SECONDS``, is
  closed (1008); a stopping worker closes its streams with 1001.

What answers the messages is the model's ``stream_fn(messages, model, context)``
(:meth:`serving.contract.pipeline.Pipeline.stream`), run on the stream's thread; a model
with none answers each message as one invocation (decode, predict, encode, on a prediction
thread under the request deadline, with dynamic batching). A model failure closes with
1011 and a reason that names the stage and the exception's type, never its text; a message
the model cannot read closes with 1008 and our error's message.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import logging
import re
import select
import socket
import threading
import time
import typing as t

import wsproto
from werkzeug.datastructures import Headers
from wsproto.connection import Connection as FrameConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as Handshake
from wsproto.utilities import RemoteProtocolError

from serving import errors
from serving.contract.invocation import Invocations
from serving.contract.streams import close_quietly, is_stream
from serving.hosts.gunicorn.http1 import Request
from serving.hosts.gunicorn.responses import error_response
from serving.protocols.base import REQUEST_ID_HEADERS, RESPONSE_ID_HEADER, request_id_of
from serving.protocols.sagemaker_stream import Answerer, answerer, stream_model, stream_session
from serving.runtime import logs

if t.TYPE_CHECKING:
    from serving.config import Config
    from serving.contract.pipeline import Pipeline

__all__ = ["STREAM_PATH", "StreamLimits", "is_stream_request", "serve_stream"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

#: Where SageMaker's sidecar opens a stream unless the client names another path.
STREAM_PATH = "/invocations-bidirectional-stream"
PATH_HEADER = "x-amzn-sagemaker-model-invocation-path"
QUERY_HEADER = "x-amzn-sagemaker-model-query-string"
#: SageMaker's patterns and lengths for the two headers (the sagemaker-runtime-http2 model).
_PATH_PATTERN = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*\Z")
MAX_PATH = 100
_QUERY_PATTERN = re.compile(r"[^&=\s]+=[^&\s]*(?:&[^&=\s]+=[^&\s]*)*\Z")
MAX_QUERY = 2048
#: Longest close reason: a Close frame's payload is at most 125 bytes, 2 of them the code.
MAX_REASON = 123
#: How often a stream blocked on its socket looks at the worker's stop flag.
STOP_POLL_SECONDS = 0.25

# Close codes (RFC 6455 7.4.1) for what the server decides.
NORMAL, GOING_AWAY, POLICY, TOO_BIG, MODEL_ERROR, TRY_AGAIN = 1000, 1001, 1008, 1009, 1011, 1013


#: What one frame counts against a stream's limits at the least: the work of taking it
#: (a frame header is 2-14 bytes on the wire, its handling far more).
FRAME_BYTES = 64


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """What one stream may spend (the ``SERVING_STREAM_*`` settings)."""

    max_message: int
    max_total: int
    idle_seconds: float
    max_seconds: float
    ping_interval: float
    missed_pings: int

    @classmethod
    def from_config(cls, config: Config) -> StreamLimits:
        mib = 1024 * 1024
        message_mb = config.stream_max_message_mb or config.max_payload_mb
        return cls(max_message=int(message_mb * mib),
                   max_total=int(config.stream_max_total_mb * mib),
                   idle_seconds=config.stream_idle_timeout, max_seconds=config.stream_max_seconds,
                   ping_interval=config.stream_ping_interval,
                   missed_pings=config.stream_missed_pings)


class StreamClosed(BaseException):
    """Ends a stream from inside the messages iterator, through the user's stream_fn.

    A BaseException, like GeneratorExit: a ``stream_fn`` that catches ``Exception`` around
    its loop must not swallow the end of its stream.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code, self.reason = code, reason


def is_stream_request(request: Request) -> bool:
    """Whether the worker hands ``request`` to a stream: anything at the stream path (a plain
    request there gets 426), WebSocket upgrades that name their path in the header, and
    WebSocket upgrades at any path SageMaker's override could name: its sidecar connects to
    the path a client named, and SageMaker does not say the header comes with it."""
    if request.path == STREAM_PATH:
        return True
    if not request.upgrade:
        return False
    return any(name == PATH_HEADER for name, _ in request.headers) or (
        _is_websocket(request) and _PATH_PATTERN.match(request.path[1:]) is not None)


def _is_websocket(request: Request) -> bool:
    return [v.lower() for v in request.header("upgrade")] == ["websocket"]


def stream_target(request: Request) -> tuple[str, str]:
    """``(path, query)`` of a stream request, its SageMaker headers checked.

    :raises errors.ClientError: 400 for a header that fails SageMaker's pattern, 404 for an
        upgrade at a path the header does not name, 426 for a request that is no upgrade.
    """
    named = request.header(PATH_HEADER)
    if named:
        value = named[0]
        if len(named) > 1 or len(value) > MAX_PATH or not _PATH_PATTERN.match(value):
            raise errors.BadRequest(
                f"X-Amzn-SageMaker-Model-Invocation-Path must be at most {MAX_PATH} characters "
                f"of [A-Za-z0-9-._] in segments separated by single slashes, not {value[:120]!r}")
        if request.path not in (STREAM_PATH, "/" + value):
            raise errors.NotFound(f"no stream at {request.path}: "
                                  f"X-Amzn-SageMaker-Model-Invocation-Path names /{value}")
    query = request.header(QUERY_HEADER)
    if query and (len(query) > 1 or len(query[0]) > MAX_QUERY
                  or not _QUERY_PATTERN.match(query[0])):
        raise errors.BadRequest(f"X-Amzn-SageMaker-Model-Query-String must be k=v pairs joined "
                                f"by &, at most {MAX_QUERY} characters")
    if not request.upgrade or not _is_websocket(request):
        raise errors.UpgradeRequired(f"{request.path} is a WebSocket stream: open it with a "
                                     f"GET and Upgrade: websocket")
    # The query the client named (the header), else the path's own.
    return request.path, query[0] if query else request.query


def handshake(request: Request) -> wsproto.WSConnection:
    """wsproto's server side of the upgrade request, checked (its 101 answer is the
    ``AcceptConnection`` it sends next).

    :raises errors.ClientError: what wsproto refuses (400, or 426 for a version other than
        13), and a ``Sec-WebSocket-Key`` that is not 16 bytes in base64 (RFC 6455 4.2.1).
    """
    connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in request.headers]
    try:
        connection.initiate_upgrade_connection(headers, request.target)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        if isinstance(hint, RejectConnection) and hint.status_code == 426:
            version = _first(request, "sec-websocket-version")
            raise errors.UpgradeRequired(f"WebSocket version {version!r} is not served: send "
                                         f"Sec-WebSocket-Version: 13") from None
        raise errors.BadRequest(f"invalid WebSocket upgrade: {exc}") from None
    key = _first(request, "sec-websocket-key")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise errors.BadRequest("Sec-WebSocket-Key must be 16 random bytes in base64 "
                                "(RFC 6455 4.2.1)")
    for event in connection.events():  # the upgrade request, as wsproto read it
        assert isinstance(event, Handshake)
    return connection


def _first(request: Request, name: str) -> str:
    values = request.header(name)
    return values[0] if values else ""


def _reason(text: str) -> str:
    """``text`` cut to fit a Close frame (123 bytes of UTF-8, whole characters)."""
    data = text.encode("utf-8")
    if len(data) <= MAX_REASON:
        return text
    return data[:MAX_REASON - 3].decode("utf-8", "ignore") + "..."


class Channel:
    """One open stream's frames over a blocking socket: messages in, under the limits, with
    the pings on both sides; messages out. Used by its stream's thread only."""

    def __init__(self, sock: socket.socket, frames: FrameConnection, limits: StreamLimits,
                 stopping: threading.Event, opened: float,
                 write: t.Callable[[bytes], None]) -> None:
        self.sock, self.frames, self.limits, self.stopping = sock, frames, limits, stopping
        self.opened = opened
        #: The worker's write: blocking, under a timeout that grows with the size.
        self._send_bytes = write
        self.ready: collections.deque[bytes | str] = collections.deque()
        self.parts: list[bytes | str] = []  # of the message being received
        self.part_bytes = 0
        self.received = 0  # bytes of every message so far
        self.last_message = opened
        self.asked = opened  # when the model last asked for a message
        self.next_ping = opened + limits.ping_interval
        self.unanswered = 0
        self.pings_sent = 0
        self.peer_closed = False  # the client's Close frame came (or the socket ended)
        self.closed = False  # ours went out
        self.messages_in = self.messages_out = 0

    # -- in ---------------------------------------------------------------------------

    def messages(self) -> t.Iterator[bytes | str]:
        """The client's messages, whole, as they come: ``str`` from text frames, ``bytes``
        from binary ones. Ends when the client closes; raises :class:`StreamClosed` when
        a limit or the worker ends the stream."""
        while True:
            while self.ready:
                self.messages_in += 1
                yield self.ready.popleft()
            if self.peer_closed:
                return
            self.asked = time.monotonic()
            self._receive()

    def past_limits(self) -> tuple[int, str] | None:
        """Whether the worker's stop or the stream's lifetime ends it now: checked before
        each message out, as well as while waiting for one in."""
        if self.stopping.is_set():
            return GOING_AWAY, "the server is stopping"
        if time.monotonic() >= self.opened + self.limits.max_seconds:
            return POLICY, (f"the stream reached its {self.limits.max_seconds:g} s limit "
                            f"(SERVING_STREAM_MAX_SECONDS)")
        return None

    def _receive(self) -> None:
        """Wait for bytes (sending pings on time), and turn them into messages. Idle time
        counts from the last message or from when the model asked for this one, whichever
        is later: a model that took long to answer has not made the client idle."""
        limits = self.limits
        while not self.ready and not self.peer_closed:
            now = time.monotonic()
            idle_at = max(self.last_message, self.asked) + limits.idle_seconds
            ending = self.past_limits()
            if ending is not None:
                raise StreamClosed(*ending)
            if now >= idle_at:
                raise StreamClosed(POLICY, f"idle: no message for {limits.idle_seconds:g} s "
                                           f"(SERVING_STREAM_IDLE_TIMEOUT)")
            if now >= self.next_ping:
                if self.unanswered >= limits.missed_pings:
                    raise StreamClosed(POLICY, f"no pong to {self.unanswered} pings in a row "
                                               f"(SERVING_STREAM_MISSED_PINGS)")
                self.pings_sent += 1
                self.unanswered += 1
                self._send_bytes(self.frames.send(Ping(payload=b"%d" % self.pings_sent)))
                self.next_ping = now + limits.ping_interval
            wait = min(self.next_ping, idle_at,
                       self.opened + limits.max_seconds, now + STOP_POLL_SECONDS) - now
            readable, _, _ = select.select([self.sock], [], [], max(wait, 0.0))
            if not readable:
                continue
            try:
                data = self.sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError, socket.timeout):
                continue
            except OSError:
                data = b""
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Bytes from the client (``b""``: its socket ended) through wsproto."""
        frames = self.frames
        frames.receive_data(data or None)
        for event in frames.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._on_data(event)
            elif isinstance(event, Ping):
                self.received += FRAME_BYTES + len(event.payload)  # answered: not free
                if self.received > self.limits.max_total:
                    raise StreamClosed(POLICY, f"the stream sent over "
                                               f"{self.limits.max_total} bytes "
                                               f"(SERVING_STREAM_MAX_TOTAL_MB)")
                self._send_bytes(frames.send(event.response()))
            elif isinstance(event, Pong):
                self.unanswered = 0
            elif isinstance(event, CloseConnection):
                state = frames.state
                if state is wsproto.ConnectionState.OPEN:
                    # wsproto found the client's frames faulty and made this event for us
                    # to send: 1002 (framing), 1007 (invalid UTF-8).
                    raise StreamClosed(event.code, event.reason or "")
                self.peer_closed = True
                if state is wsproto.ConnectionState.REMOTE_CLOSING:  # the client's Close
                    self._send_bytes(frames.send(event.response()))
                self.closed = True  # answered, or the socket ended: nothing more goes out

    def _on_data(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        # Each frame counts at least FRAME_BYTES, whatever it carries: a client sending
        # millions of empty continuation frames meets the limits as one sending data.
        size = max(FRAME_BYTES,
                   len(data.encode("utf-8")) if isinstance(data, str) else len(data))
        self.part_bytes += size
        self.received += size
        limits = self.limits
        if self.part_bytes > limits.max_message:
            raise StreamClosed(TOO_BIG, f"a message is over {limits.max_message} bytes "
                                        f"(SERVING_STREAM_MAX_MESSAGE_MB)")
        if self.received > limits.max_total:
            raise StreamClosed(POLICY, f"the stream sent over {limits.max_total} bytes "
                                       f"(SERVING_STREAM_MAX_TOTAL_MB)")
        self.parts.append(data)
        if event.message_finished:
            parts, self.parts, self.part_bytes = self.parts, [], 0
            if len(parts) == 1:
                message = parts[0]
            else:
                message = "".join(parts) if isinstance(data, str) else b"".join(parts)
            if isinstance(message, bytearray):
                message = bytes(message)
            self.ready.append(message)
            self.last_message = time.monotonic()

    # -- out --------------------------------------------------------------------------

    def send(self, item: t.Any, to_json: t.Callable[[t.Any], bytes]) -> None:
        """One message out: ``str`` as a text frame, bytes as a binary one, an iterator as
        one message in fragments (a frame per item as it comes, then an empty last frame),
        anything else as JSON text."""
        frames = self.frames
        if is_stream(item):
            kind: type | None = None
            for part in item:
                part = _frame_data(part, to_json)
                kind = kind or type(part)
                if type(part) is not kind:
                    raise TypeError("the parts of one message must all be str or all bytes")
                self._send_bytes(frames.send(_message(part, finished=False)))
            self._send_bytes(frames.send(_message("" if kind is str else b"", finished=True)))
        else:
            self._send_bytes(frames.send(_message(_frame_data(item, to_json), finished=True)))
        self.messages_out += 1

    def close(self, code: int, reason: str) -> None:
        """Send our Close frame (once), and give the client a moment to answer it."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.frames.state in (wsproto.ConnectionState.OPEN,
                                     wsproto.ConnectionState.REMOTE_CLOSING):
                self._send_bytes(self.frames.send(CloseConnection(code=code,
                                                                  reason=_reason(reason))))
            self.sock.shutdown(socket.SHUT_WR)
            if self.peer_closed:
                return
            # Read until the client's Close (discarding what comes before it), at most a
            # second, so that it reads ours rather than a reset.
            deadline = time.monotonic() + 1.0
            frames = self.frames
            while frames.state is not wsproto.ConnectionState.CLOSED:
                left = deadline - time.monotonic()
                readable, _, _ = select.select([self.sock], [], [], max(left, 0.0))
                data = self.sock.recv(65536) if readable else b""
                if not data:
                    break
                frames.receive_data(data)
                for _ in frames.events():
                    pass
        except OSError:
            pass


def _frame_data(item: t.Any, to_json: t.Callable[[t.Any], bytes]) -> bytes | str:
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    return to_json(item).decode("utf-8")


def _message(data: bytes | str, finished: bool) -> TextMessage | BytesMessage:
    if isinstance(data, str):
        return TextMessage(data=data, message_finished=finished)
    return BytesMessage(data=data, message_finished=finished)


def _close_for(error: errors.ServingError) -> tuple[int, str]:
    """The close code and reason a pipeline error ends a stream with."""
    if isinstance(error, (errors.PayloadTooLarge, errors.DecodedTooLarge)):
        return TOO_BIG, error.message
    if isinstance(error, errors.ClientError):
        return POLICY, error.message
    if isinstance(error, errors.ServiceUnavailable):
        return TRY_AGAIN, error.message
    return MODEL_ERROR, error.message


@dataclasses.dataclass
class StreamServices:
    """What a stream's thread needs from its worker."""

    #: The invocation service (the app's): which model, negotiation, each message's
    #: invocation, the sessions.
    invocations: Invocations
    limits: StreamLimits
    stopping: threading.Event
    #: Writes to the stream's socket from its thread (blocking, under a timeout).
    write: t.Callable[[bytes], None]
    #: Where streams are counted (``None``: metrics off).
    metrics: t.Any = None
    #: TorchServe's token authorization of the main port, when it is on: a stream needs
    #: the inference key as every other request there does.
    keys: t.Any = None


def serve_stream(sock: socket.socket, request: Request, leftover: bytes,
                 services: StreamServices, peer: str) -> None:
    """One stream from its upgrade request to its close, on the stream's own thread.

    Refuses what cannot be a stream with our JSON error; else answers 101, then runs the
    model's ``stream_fn`` (or one invocation a message) until it, the client or a limit
    ends the stream. Never raises: the caller closes the socket.
    """
    request_id = request_id_of(next(iter(request.header(name.lower())), None)
                               for name in REQUEST_ID_HEADERS)
    token = logs.request_id.set(request_id)
    opened = time.monotonic()
    outcome = (0, "")
    channel: Channel | None = None
    try:
        try:
            if services.keys is not None:
                services.keys.check(next(iter(request.header("authorization")), None),
                                    "inference")
            path, query = stream_target(request)
            headers = Headers(request.headers)
            pipeline = stream_model(services.invocations, headers)
            session = stream_session(services.invocations.sessions, headers)
            answer = answerer(pipeline, headers, services.invocations, request_id)
            connection = handshake(request)
            accept = connection.send(AcceptConnection(
                extra_headers=[(RESPONSE_ID_HEADER.encode(), request_id.encode())]))
        except errors.ServingError as error:
            services.write(error_response(error, close=True, request_id=request_id))
            outcome = (error.status_code, error.message)
            return
        services.write(accept)
        channel = Channel(sock, connection.connection, services.limits, services.stopping,
                          opened, services.write)
        if leftover:
            channel.feed(leftover)
        context_details = {"path": path, "query": query, "request_id": request_id,
                           "target_variant": headers.get("X-Amzn-SageMaker-Target-Variant"),
                           "inference_id": headers.get("X-Amzn-SageMaker-Inference-Id"),
                           "custom_attributes": headers.get("X-Amzn-SageMaker-Custom-Attributes"),
                           "session": session}
        outcome = _converse(channel, pipeline, answer, headers, context_details)
        channel.close(*outcome)
        if session is not None and services.invocations.sessions is not None:
            try:  # what the stream kept in the session, for the session's next requests
                services.invocations.sessions.save(session)
            except errors.ServingError as error:
                log.warning("the stream's session was not saved: %s", error.message)
    except StreamClosed as closing:  # before the conversation began (the leftover bytes)
        outcome = (closing.code, closing.reason)
        if channel is not None:
            channel.close(*outcome)
    except OSError:
        outcome = (1006, "the connection broke")
    except Exception:  # a bug of ours: the worker and its other streams go on
        log.exception("the stream at %s failed", request.target_text)
        outcome = (MODEL_ERROR, "internal error")
        if channel is not None:
            channel.close(*outcome)
    finally:
        _log_stream(request, peer, opened, outcome, channel)
        _count_stream(services.metrics, request, opened, outcome, channel)
        logs.request_id.reset(token)


def _converse(channel: Channel, pipeline: Pipeline, answer: Answerer, headers: Headers,
              details: dict[str, t.Any]) -> tuple[int, str]:
    """Run the model over the stream; the close code and reason it ends with."""
    context = pipeline.stream_context(headers, details)
    to_json = pipeline.stream_item
    items = answer(channel.messages(), context)
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                return NORMAL, ""
            except StreamClosed as closing:
                return closing.code, closing.reason
            except errors.ServingError as error:
                return _close_for(error)
            except Exception as exc:  # from the model's code
                log.exception("stream_fn raised")
                return MODEL_ERROR, f"stream_fn raised {type(exc).__name__}"
            if channel.closed:
                return NORMAL, ""  # the client left: what the model says now has no reader
            ending = channel.past_limits()  # a model that yields without ever reading
            if ending is not None:
                return ending
            try:
                channel.send(item, to_json)
            except OSError:
                raise  # the connection broke: nothing more can be sent
            except StreamClosed as closing:
                return closing.code, closing.reason
            except errors.ServingError as error:  # a streamed answer's later chunk
                return _close_for(error)
            except (TypeError, ValueError) as exc:
                log.exception("stream_fn yielded what cannot be sent")
                return MODEL_ERROR, f"stream_fn yielded what cannot be sent: {type(exc).__name__}"
            except Exception as exc:  # the model's code, making a fragmented message's parts
                log.exception("stream_fn raised")
                return MODEL_ERROR, f"stream_fn raised {type(exc).__name__}"
    finally:
        close_quietly(items)


def _count_stream(metrics: t.Any, request: Request, opened: float, outcome: tuple[int, str],
                  channel: Channel | None) -> None:
    """A refused upgrade is a request (its status, under the stream path's route); an
    opened stream counts its close code, messages and time."""
    if metrics is None:
        return
    elapsed = time.monotonic() - opened
    if channel is None:
        content_type = request.header("content-type")
        metrics.request_done(STREAM_PATH, outcome[0], content_type[0] if content_type else None,
                             elapsed)
    else:
        metrics.stream_closed(outcome[0], channel.messages_in, channel.messages_out, elapsed)


def _log_stream(request: Request, peer: str, opened: float, outcome: tuple[int, str],
                channel: Channel | None) -> None:
    code, reason = outcome
    elapsed = time.monotonic() - opened
    target = request.target_text
    if channel is None:  # refused: an HTTP status
        access_log.info('%s "%s %s" %d %.1fms (stream refused: %s)', peer, request.method,
                        target, code, elapsed * 1000, reason,
                        extra={"status": code, "remote": peer})
        return
    access_log.info('%s "%s %s" 101 %.1fms (stream closed %d%s; %d messages in, %d out)',
                    peer, request.method, target, elapsed * 1000, code,
                    f" {reason}" if reason else "", channel.messages_in, channel.messages_out,
                    extra={"status": 101, "remote": peer})
