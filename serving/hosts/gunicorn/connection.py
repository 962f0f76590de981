"""One client connection of the gunicorn worker, as a state machine with no I/O of its own.

The worker's loop reads the socket and hands the bytes here (:meth:`Connection.on_data`);
this says what comes next (:meth:`Connection.next_step`: a complete request to answer, an
error to refuse with, a close, a ``100 Continue``) and which deadline has passed
(:meth:`Connection.expiry`: the head within ``SERVING_HEADER_TIMEOUT``, the body at
``SERVING_MIN_BODY_RATE_KB`` after its first second, an idle kept-alive connection, the
linger after an error). The parsing is llhttp's (:mod:`serving.hosts.gunicorn.http1`).
"""

from __future__ import annotations

import socket
import typing as t

from serving import errors
from serving.hosts.gunicorn.http1 import Request, RequestReader

__all__ = ["BODY", "BUSY", "CLOSE", "CONTINUE", "Connection", "HEAD", "IDLE", "LINGER",
           "STREAM"]

#: The body's first second is free of the rate check (a client starting up).
BODY_GRACE_SECONDS = 1.0
#: After an error answer, unread input is discarded this long before closing, so that the
#: client reads the answer instead of a reset.
LINGER_SECONDS = 1.0

# States: waiting for a request, receiving its head or its body, answering (an HTTP thread
# holds it), discarding input after an error answer, a WebSocket stream (its own thread
# holds it, for its life).
IDLE, HEAD, BODY, BUSY, LINGER = "idle", "head", "body", "busy", "linger"
STREAM = "stream"

# What the loop does next, besides answering a request or refusing with an error.
CLOSE = "close"
CONTINUE = "continue"  # send "100 Continue": the client waits for it before its body

Step = t.Union[Request, errors.ServingError, str, None]


class Connection:
    """One client connection: its parser, and where its current request stands."""

    __slots__ = ("sock", "addr", "state", "reader", "request", "deadline", "received",
                 "served", "fd", "answering", "port", "accepted", "got")

    def __init__(self, sock: socket.socket, addr: t.Any, now: float, header_timeout: float,
                 port: str, max_body: int) -> None:
        self.sock, self.addr = sock, addr
        self.port = port  # of the listener it came in on: the main port or the metrics one
        self.fd = sock.fileno()
        self.reader = RequestReader(max_body)
        self.request: Request | None = None  # the one being answered
        self.served = 0
        self.accepted = now
        self.got = 0  # bytes read, ever
        self.state = HEAD
        self.deadline = now + header_timeout
        self.received = 0  # bytes read since the current request's body began
        #: Whether bytes of the answer went out (after that, a failure can only close).
        self.answering = False

    @property
    def peer(self) -> str:
        return self.addr[0] if isinstance(self.addr, tuple) else str(self.addr)

    @property
    def between_requests(self) -> bool:
        """Idle, or kept alive with nothing of a next request read: safe to close on a stop."""
        return self.state == IDLE or (self.state == HEAD and self.reader.current is None
                                      and self.served > 0)

    def on_data(self, data: bytes, now: float, header_timeout: float) -> None:
        """Bytes read from the client; ``b""``: it closed its side (a request it left
        unfinished becomes a 400 in the reader)."""
        if not data:
            self.reader.end_of_input()
            return
        self.got += len(data)
        if self.state == IDLE:
            self.state = HEAD
            self.deadline = now + header_timeout
        elif self.state == BODY:
            self.received += len(data)
        self.reader.feed(data, now)

    def next_step(self, now: float, header_timeout: float) -> Step:
        """The next complete request (or the error that ends the connection), :data:`CLOSE`,
        :data:`CONTINUE`, or ``None`` (wait for more bytes); notes where the request being
        received stands."""
        reader = self.reader
        if reader.ready:
            return reader.ready.popleft()
        if reader.closed:  # nothing more will be parsed (a full pipeline, an upgrade)
            return CLOSE
        current = reader.current
        if current is None:
            return None  # still HEAD (before a first byte) or IDLE
        if current.headers_done:
            if self.state != BODY:
                self.state = BODY
                self.received = 0
                # Its rate counts from now: a head read behind a request being answered
                # waited on us, not on the client.
                current.body_started = now
            if current.expect_continue and not current.continued:
                current.continued = True
                return CONTINUE
        elif self.state == IDLE:
            self.state = HEAD
            self.deadline = now + header_timeout
        return None

    def expiry(self, now: float, header_timeout: float,
               min_body_rate: float) -> str | tuple[errors.ServingError, str] | None:
        """What a passed deadline calls for: :data:`CLOSE`, ``(408 error, slow phase)``, or
        ``None``. A connection an HTTP thread holds has no deadline here."""
        state = self.state
        if state == BUSY or state == STREAM:
            return None
        if state in (LINGER, IDLE):
            return CLOSE if now > self.deadline else None
        if state == HEAD:
            if now <= self.deadline:
                return None
            if self.served and self.reader.current is None:
                return CLOSE  # a kept-alive connection that sent nothing more
            return errors.RequestTimeout(
                f"the request headers did not arrive within {header_timeout:g} s "
                f"(SERVING_HEADER_TIMEOUT)"), "headers"
        current = self.reader.current  # BODY
        started = current.body_started if current is not None else now
        elapsed = now - started - BODY_GRACE_SECONDS
        if elapsed > 0 and self.received < min_body_rate * elapsed:
            return errors.RequestTimeout(
                f"the request body came slower than {min_body_rate / 1024:g} KiB/s "
                f"(SERVING_MIN_BODY_RATE_KB): {self.received} bytes in "
                f"{now - started:.1f} s"), "body"
        return None

    def take(self, request: Request) -> bool:
        """An HTTP thread takes ``request``; whether the connection was not busy before
        (a pipelined request follows its predecessor on the same thread's turn)."""
        was_busy = self.state == BUSY
        self.state = BUSY
        self.request = request
        return not was_busy

    def answered(self) -> None:
        self.served += 1
        self.request = None

    def wait_for_next(self, now: float, keepalive: float) -> None:
        """Kept alive after an answer: idle until the next request, at most ``keepalive``."""
        self.state = IDLE
        self.deadline = now + keepalive

    def linger(self, now: float) -> None:
        """After an error answer: read and discard until the client closes, at most
        LINGER_SECONDS; nothing more is parsed."""
        self.state = LINGER
        self.deadline = now + LINGER_SECONDS
        self.request = None
        reader = self.reader
        reader.closed = True
        reader.ready.clear()
        reader.current = None
