"""The gunicorn worker: an event loop reads each request whole before a thread sees it.

Why a worker of our own: gunicorn's gthread worker hands a connection to a
thread as soon as its first byte arrives, and the thread then blocks reading
headers and body. Eight clients sending a byte a second hold every thread, and
nothing ever times them out. Here one loop per worker (``selectors``) reads
every connection without blocking and under deadlines:

- the head (request line and headers) within ``SERVING_HEADER_TIMEOUT``;
- the body at ``SERVING_MIN_BODY_RATE_KB`` or faster after its first second;
- framing checked before a byte of body is kept: Content-Length with
  Transfer-Encoding, a body over the payload limit, a head too large, and a
  body that ends before its Content-Length are refused.

A client past these limits gets our JSON error (408, 400, 413, 414, 431, 501)
and its connection is closed. Only a complete request goes to one of the
worker's HTTP threads, which runs the Flask app and writes the answer. A slow
client costs a socket and its buffer, never a thread, and each worker holds at
most ``SERVING_MAX_CONNECTIONS``.

The worker listens only while it can serve: its model is loaded (with
``--no-preload`` a loading worker takes no connection, so a restart after a
crash is invisible when another worker is ready), and it has a free HTTP
thread (else the other workers take the connection). It stops listening at
once on SIGTERM, and when its runtime asks it to retire (a prediction stuck
past its deadline). It then answers what it holds and exits. On SIGTERM,
whatever is still unanswered at the end of the grace period gets a 503 and
counts as dropped, and ``serve`` exits non-zero.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
import typing as t
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote_to_bytes, urlsplit

import orjson
from gunicorn.workers.base import Worker

from serving import errors, logs
from serving.app import ARRIVED_KEY, REQUEST_ID_HEADERS, RESPONSE_ID_HEADER, request_id_of
from serving.metrics import NO_ROUTE
from serving.negotiation import content_type_of

__all__ = ["ServingWorker", "parse_head"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

#: Longest request line; past it: 414.
MAX_REQUEST_LINE = 8190
#: Longest header field line, and most fields; past them: 431.
MAX_FIELD_BYTES = 8190
MAX_FIELDS = 100
#: Longest head as a whole; past it: 431.
MAX_HEAD_BYTES = 64 * 1024
#: The body's first second is free of the rate check (a client starting up).
BODY_GRACE_SECONDS = 1.0
#: After an error answer, unread input is discarded this long before closing, so that the
#: client reads the answer instead of a reset.
LINGER_SECONDS = 1.0
#: How often the loop looks at deadlines and tells the master it is alive.
TICK_SECONDS = 0.25
#: How long a retiring worker waits for requests still being sent.
RETIRE_SECONDS = 10.0
#: How often a worker whose threads are all busy still takes one waiting connection, so
#: that nothing starves in the listen backlog while every worker is saturated. A worker
#: with a free thread waits on the listener and takes new connections first. Only while
#: the worker is finishing requests, two or more in the last SATURATED_PROGRESS_SECONDS:
#: one whose threads are stuck takes nothing more. (With one, a worker whose last free
#: thread had just answered a request and then taken a request that hangs took the next
#: connection too, which waited there for its 504 instead of for a fresh worker.)
#: The loop tries when it wakes anyway (a request finishing wakes it), at most this often.
#: At 50 ms, the 32 connections wrk opens at once took up to 0.7 s to be accepted by two
#: saturated workers, and p99 at 32 clients was 50-130 ms; at 5 ms it is about 20 ms.
SATURATED_ACCEPT_SECONDS = 0.005
SATURATED_PROGRESS_SECONDS = 0.1
#: A connection accepted this recently that has sent nothing yet counts as wanting a
#: thread: clients such as wrk open all their connections at once, and one worker must
#: not take them all before their first requests arrive. Short, so that idle connections
#: cannot keep a worker from listening.
UNSTARTED_SECONDS = 0.05

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")

# Connection states.
_IDLE, _HEAD, _BODY, _CHUNKED, _BUSY, _LINGER = "idle", "head", "body", "chunked", "busy", "linger"


class Head:
    """A parsed request head: what the loop needs to frame the body, and the WSGI environ."""

    __slots__ = ("method", "target", "version", "headers", "length", "chunked", "keep_alive",
                 "expect_continue")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.length = 0
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _is_token(data: bytes) -> bool:
    return bool(data) and all(c in _TOKEN for c in data)


def parse_head(data: bytes) -> Head:
    """Parse a request head (without its final empty line), strictly.

    Raises a :class:`serving.errors.ServingError` with the status the client
    gets: 400 for anything malformed or ambiguous (obsolete line folding, a space
    before a colon, Content-Length with Transfer-Encoding or twice with different
    values), 414/431 for sizes, 501 for a transfer coding other than chunked,
    505 for an HTTP version other than 1.0 and 1.1, 417 for an unknown Expect.
    """
    lines = data.split(b"\r\n")
    line = lines[0]
    if len(line) > MAX_REQUEST_LINE:
        raise errors.URITooLong(f"the request line is over {MAX_REQUEST_LINE} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise errors.BadRequest(f"invalid request line {line[:100].decode('latin-1')!r}")
    head = Head()
    head.method = parts[0].decode("ascii")
    head.target = parts[1].decode("latin-1")
    version = parts[2]
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/") and len(version) == 8:
            raise errors.ServingError(f"HTTP version {version.decode('latin-1')} is not supported",
                                      status_code=505)
        raise errors.BadRequest(f"invalid HTTP version {version[:20].decode('latin-1')!r}")
    head.version = version.decode("ascii")
    fields = lines[1:]
    if len(fields) > MAX_FIELDS:
        raise errors.HeadersTooLarge(f"more than {MAX_FIELDS} header fields")
    for field in fields:
        if len(field) > MAX_FIELD_BYTES:
            raise errors.HeadersTooLarge(f"a header field is over {MAX_FIELD_BYTES} bytes")
        if field[:1] in (b" ", b"\t"):
            raise errors.BadRequest("obsolete header line folding is not accepted")
        name, colon, value = field.partition(b":")
        if not colon or not _is_token(name):
            raise errors.BadRequest(f"invalid header field {field[:100].decode('latin-1')!r}")
        value = value.strip(b" \t")
        if b"\0" in value or b"\n" in value or b"\r" in value:
            raise errors.BadRequest(f"invalid value in header {name.decode('ascii')}")
        head.headers.append((name.decode("ascii").lower(), value.decode("latin-1")))

    transfer = head.header("transfer-encoding")
    lengths = head.header("content-length")
    if transfer:
        if lengths:  # request smuggling's favourite ambiguity
            raise errors.BadRequest("a request cannot have both Content-Length and "
                                    "Transfer-Encoding")
        codings = [c.strip().lower() for c in ",".join(transfer).split(",")]
        if codings != ["chunked"] or head.version == "HTTP/1.0":
            raise errors.ServingError(f"Transfer-Encoding {', '.join(transfer)!r} is not supported; "
                                      f"send chunked or a Content-Length", status_code=501)
        head.chunked = True
    elif lengths:
        values = {v.strip() for v in ",".join(lengths).split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise errors.BadRequest(f"invalid Content-Length {', '.join(lengths)!r}")
        head.length = int(next(iter(values)))

    tokens = {c.strip().lower() for c in ",".join(head.header("connection")).split(",")}
    head.keep_alive = ("close" not in tokens if head.version == "HTTP/1.1"
                       else "keep-alive" in tokens)
    expect = head.header("expect")
    if expect:
        if [e.lower() for e in expect] != ["100-continue"]:
            raise errors.ServingError(f"Expect {', '.join(expect)!r} is not supported",
                                      status_code=417)
        head.expect_continue = head.version == "HTTP/1.1"
    return head


class _Connection:
    """One client connection and where its current request stands."""

    __slots__ = ("sock", "addr", "state", "buf", "head", "deadline", "body", "body_started",
                 "received", "chunk_left", "arrived", "served", "fd", "answering", "port")

    def __init__(self, sock: socket.socket, addr: t.Any, now: float, header_timeout: float,
                 port: str) -> None:
        self.sock, self.addr = sock, addr
        self.port = port  # of the listener it came in on: the main port or the metrics one
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.served = 0
        self.start_head(now, header_timeout)

    def start_head(self, now: float, header_timeout: float) -> None:
        self.state = _HEAD
        self.head: Head | None = None
        self.deadline = now + header_timeout
        self.body = bytearray()
        self.body_started = 0.0
        self.received = 0
        self.chunk_left: int | None = None
        self.arrived = now
        #: Whether bytes of the answer went out (after that, a failure can only close).
        self.answering = False

    @property
    def peer(self) -> str:
        return self.addr[0] if isinstance(self.addr, tuple) else str(self.addr)


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second rather than once an answer."""
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = formatdate(now, usegmt=True)
        _date_cache = (now, text)  # one assignment: threads see the old pair or the new
    return text


def _response_bytes(error: errors.ServingError, close: bool, request_id: str) -> bytes:
    """A whole HTTP answer carrying ``error`` as our JSON body: the app's bytes, its
    closing line break included (Flask's JSON answers end with one)."""
    body = orjson.dumps({**error.to_dict(), "request_id": request_id},
                        option=orjson.OPT_APPEND_NEWLINE)
    lines = [f"HTTP/1.1 {error.status_code} {HTTPStatus(error.status_code).phrase}",
             "Content-Type: application/json",
             f"Content-Length: {len(body)}", f"Date: {http_date()}",
             f"{RESPONSE_ID_HEADER}: {request_id}"]
    lines += [f"{k}: {v}" for k, v in error.headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _port_of(listener: t.Any) -> int | str:
    try:
        address = listener.getsockname()
    except OSError:
        return ""
    return address[1] if isinstance(address, tuple) else ""


class ServingWorker(Worker):
    """gunicorn worker class ``serving.worker.ServingWorker``; see the module's text."""

    def init_process(self) -> None:
        application = self.app
        config = application.config
        self.config = config
        self.runtime = application.runtime
        self.models = application.models
        self.metrics = application.metrics
        for pipeline in self.models.loaded():
            if pipeline.batcher is not None:
                pipeline.batcher.clients = lambda: len(self.conns)
        self.header_timeout = float(config.header_timeout)
        self.min_body_rate = config.min_body_rate_kb * 1024
        self.max_body = config.max_payload_bytes
        self.max_connections = config.max_connections
        self.threads = config.concurrency
        self.grace = float(config.timeout)
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, _Connection] = {}
        self.busy = 0
        self.recent: list[_Connection] = []  # accepted within UNSTARTED_SECONDS
        self.last_finished = self.previous_finished = 0.0  # the two latest answers' times
        self.listening = False
        self.stopping_at: float | None = None
        self.retiring = False
        self.dropped = 0
        self.server_addr = self.sockets[0].getsockname() if self.sockets else ("", 0)
        # Each listener's port, for SERVER_PORT: /metrics may have a port of its own.
        self.ports = {id(listener): str(_port_of(listener)) for listener in self.sockets}
        self.tasks: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
        self.finished: queue.SimpleQueue[tuple[_Connection, bool]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        for index in range(self.threads):
            threading.Thread(target=self._http_thread, name=f"http-{index}", daemon=True).start()
        super().init_process()  # loads the app (post_fork ran already), then calls run()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, "wake")  # signals
        for listener in self.sockets:  # accept() must never block the loop
            listener.setblocking(False)
        next_tick = next_saturated_accept = 0.0
        while True:
            now = time.monotonic()
            if now >= next_tick:
                # Once a tick, not once per event: under load the loop turns thousands of
                # times a second, and these are a syscall and a walk over every connection.
                next_tick = now + TICK_SECONDS
                self.notify()
                self._expire(now)
                if self.metrics is not None:
                    self.metrics.in_flight.set(self.busy)
                    self.metrics.flush()
            if self.stopping_at is None and (not self.alive or self.runtime.retire_reason):
                self._begin_stop(now)
            if self.stopping_at is not None and self._stop_done(now):
                break
            if self.ppid != os.getppid():
                log.info("worker %s: the master is gone; exiting", self.pid)
                break
            can_take = (self.stopping_at is None and self.models.ready
                        and len(self.conns) < self.max_connections)
            self._set_listening(can_take and self.busy + self._unstarted(now) < self.threads)
            timeout = TICK_SECONDS
            if can_take and not self.listening:  # saturated
                if now >= next_saturated_accept \
                        and now - self.previous_finished < SATURATED_PROGRESS_SECONDS:
                    next_saturated_accept = now + SATURATED_ACCEPT_SECONDS
                    for listener in self.sockets:
                        self._accept(listener, 1)
            try:
                events = self.selector.select(timeout)
            except InterruptedError:
                continue
            for key, _ in events:
                if key.data == "wake":
                    self._drain_pipe(key.fd)
                elif key.data == "listen":
                    self._accept(key.fileobj)
                else:
                    self._on_readable(key.data)
            self._collect_finished()
        self._exit()

    def _drain_pipe(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _set_listening(self, want: bool) -> None:
        if want == self.listening:
            return
        for listener in self.sockets:
            if want:
                self.selector.register(listener, selectors.EVENT_READ, "listen")
            else:
                self.selector.unregister(listener)
        self.listening = want

    def _unstarted(self, now: float) -> int:
        """Connections accepted in the last UNSTARTED_SECONDS that have sent nothing yet."""
        return sum(1 for conn in self.recent
                   if now - conn.arrived < UNSTARTED_SECONDS and conn.state == _HEAD
                   and not conn.buf and not conn.served)

    def _accept(self, listener: t.Any, count: int | None = None) -> None:
        # A few at a time: connections a worker cannot serve soon are better left to others.
        now = time.monotonic()
        self.recent = [c for c in self.recent if now - c.arrived < UNSTARTED_SECONDS]
        for _ in range(count or max(1, self.threads - self.busy - self._unstarted(now))):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("worker %s cannot accept: %s", self.pid, exc)
                    return
                raise
            self._add(sock, addr, listener)

    def _add(self, sock: socket.socket, addr: t.Any, listener: t.Any) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # a Unix socket
        conn = _Connection(sock, addr, time.monotonic(), self.header_timeout,
                           self.ports.get(id(listener), ""))
        self.conns[conn.fd] = conn
        self.recent.append(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)

    # -- reading a request -------------------------------------------------------------

    def _on_readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == _LINGER:
            if not data:
                self._close(conn)
            return
        if not data:  # the client closed its side
            if conn.state in (_BODY, _CHUNKED):
                expected = "its chunked end" if conn.state == _CHUNKED else \
                    f"the {conn.head.length} bytes its Content-Length declared"
                got = len(conn.body) + len(conn.buf) if conn.state == _CHUNKED else len(conn.buf)
                self._refuse(conn, errors.BadRequest(
                    f"the body ended after {got} bytes, before {expected}"))
            else:
                self._close(conn)  # nothing, or a partial head: no request to answer
            return
        now = time.monotonic()
        if conn.state == _IDLE:
            conn.start_head(now, self.header_timeout)
        if conn.state in (_BODY, _CHUNKED):
            conn.received += len(data)
        conn.buf += data
        self._advance(conn, now)

    def _advance(self, conn: _Connection, now: float) -> None:
        """Move ``conn`` on with what its buffer holds; dispatch a complete request."""
        try:
            if conn.state == _HEAD:
                if not self._read_head(conn, now):
                    return
            if conn.state == _BODY:
                length = conn.head.length
                if len(conn.buf) < length:
                    return
                if len(conn.buf) == length:  # the usual case: the buffer is the body
                    conn.body, conn.buf = conn.buf, bytearray()
                else:  # pipelined: the next request's bytes follow
                    conn.body = conn.buf[:length]
                    del conn.buf[:length]
            elif conn.state == _CHUNKED:
                if not self._read_chunks(conn):
                    return
        except errors.ServingError as error:
            self._refuse(conn, error)
            return
        self._dispatch(conn)

    def _read_head(self, conn: _Connection, now: float) -> bool:
        buf = conn.buf
        while buf[:2] == b"\r\n":  # empty lines before a request are allowed (RFC 9112 2.2)
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if buf.find(b"\r\n") < 0 and len(buf) > MAX_REQUEST_LINE:
                raise errors.URITooLong(f"the request line is over {MAX_REQUEST_LINE} bytes")
            if len(buf) > MAX_HEAD_BYTES:
                raise errors.HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes")
            return False
        if end > MAX_HEAD_BYTES:
            raise errors.HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes")
        head = parse_head(bytes(buf[:end]))
        del buf[:end + 4]
        conn.head = head
        if head.length > self.max_body:
            raise errors.PayloadTooLarge(self.max_body, head.length)
        conn.state = _CHUNKED if head.chunked else _BODY
        conn.body_started = now
        conn.received = len(buf)
        if head.expect_continue and (head.chunked or head.length > len(buf)):
            self._send_now(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_chunks(self, conn: _Connection) -> bool:
        """Take whole chunks out of the buffer; True once the last chunk and trailers are in."""
        buf = conn.buf
        while True:
            if conn.chunk_left is None:  # a chunk-size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_FIELD_BYTES:
                        raise errors.BadRequest("a chunk-size line is too long")
                    return False
                size = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                if not size or not all(c in _HEX for c in size) or len(size) > 16:
                    raise errors.BadRequest(f"invalid chunk size {size[:20].decode('latin-1')!r}")
                del buf[:end + 2]
                conn.chunk_left = int(size, 16) or -1
                if len(conn.body) + max(conn.chunk_left, 0) > self.max_body:
                    raise errors.PayloadTooLarge(self.max_body)
            elif conn.chunk_left == -1:  # trailer fields, up to an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise errors.HeadersTooLarge("the trailer fields are too large")
                    return False
                del buf[:end + 2]
                if end == 0:
                    return True
            else:
                size = conn.chunk_left
                if len(buf) < size + 2:
                    return False
                if buf[size:size + 2] != b"\r\n":
                    raise errors.BadRequest("a chunk is not followed by CRLF")
                conn.body += buf[:size]
                del buf[:size + 2]
                conn.chunk_left = None

    def _expire(self, now: float) -> None:
        """Apply the deadlines: idle, head, body rate, linger."""
        for conn in list(self.conns.values()):
            state = conn.state
            if state == _BUSY:
                continue
            if state in (_LINGER, _IDLE):
                if now > conn.deadline:
                    self._close(conn)
            elif state == _HEAD and now > conn.deadline:
                if conn.served and not conn.buf:
                    self._close(conn)  # a kept-alive connection that sent nothing more
                else:
                    self._refuse(conn, errors.RequestTimeout(
                        f"the request headers did not arrive within {self.header_timeout:g} s "
                        f"(SERVING_HEADER_TIMEOUT)"), slow_phase="headers")
            elif state in (_BODY, _CHUNKED):
                elapsed = now - conn.body_started - BODY_GRACE_SECONDS
                if elapsed > 0 and conn.received < self.min_body_rate * elapsed:
                    self._refuse(conn, errors.RequestTimeout(
                        f"the request body came slower than {self.min_body_rate / 1024:g} KiB/s "
                        f"(SERVING_MIN_BODY_RATE_KB): {conn.received} bytes in "
                        f"{now - conn.body_started:.1f} s"), slow_phase="body")

    # -- answering ---------------------------------------------------------------------

    def _dispatch(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.state = _BUSY
        self.busy += 1
        self.tasks.put(conn)

    def _http_thread(self) -> None:
        while True:
            conn = self.tasks.get()
            keep = False
            try:
                keep = self._respond(conn)
            except BaseException:  # SystemExit from user code too: the thread must live on
                log.exception("answering %s %s failed", conn.head.method, conn.head.target)
                if not conn.answering:
                    try:
                        self._write(conn, _response_bytes(
                            errors.ServingError("internal error: the server failed to answer"),
                            close=True, request_id=self._request_id(conn)))
                    except OSError:
                        pass
            self.finished.put((conn, keep))
            try:
                os.write(self.wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so the loop is awake anyway

    def _collect_finished(self) -> None:
        while True:
            try:
                conn, keep = self.finished.get_nowait()
            except queue.Empty:
                return
            self.busy -= 1
            self.previous_finished, self.last_finished = self.last_finished, time.monotonic()
            conn.served += 1
            if not keep or self.stopping_at is not None:
                self._close(conn)
                continue
            try:
                if conn.sock.gettimeout() != 0.0:  # a slow write set a timeout
                    conn.sock.setblocking(False)
                self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):
                self._close(conn)
                continue
            now = time.monotonic()
            if conn.buf:  # the client sent its next request already (pipelining)
                conn.start_head(now, self.header_timeout)
                self._advance(conn, now)
            else:
                conn.state = _IDLE
                conn.deadline = now + self.cfg.keepalive

    def _environ(self, conn: _Connection) -> dict[str, t.Any]:
        head = conn.head
        body, conn.body = bytes(conn.body), bytearray()
        target = head.target
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
            path = path.partition("#")[0]
        server = self.server_addr
        environ: dict[str, t.Any] = {
            "REQUEST_METHOD": head.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_NAME": str(server[0]) if isinstance(server, tuple) else "localhost",
            "SERVER_PORT": conn.port,
            "SERVER_PROTOCOL": head.version,
            "REMOTE_ADDR": conn.peer,
            "REMOTE_PORT": str(conn.addr[1]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            # bytes, made once: BytesIO shares it, and reading it whole returns it uncopied.
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            ARRIVED_KEY: conn.arrived,
        }
        for name, value in head.headers:
            if "_" in name or name == "transfer-encoding":
                continue  # an underscore could pass for a dash in the environ: dropped
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if head.chunked or head.length:
            environ["CONTENT_LENGTH"] = str(len(body))  # the body is here, whole
        return environ

    def _respond(self, conn: _Connection) -> bool:
        """Run the app on a complete request and write its answer; True to keep the connection."""
        head = conn.head
        keep = head.keep_alive and self.stopping_at is None
        started: list[t.Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: t.Any = None) -> t.Callable[[bytes], None]:
            if exc_info and started and started[0] is True:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return lambda data: None  # the legacy write(): not used by Flask

        result = self.wsgi(self._environ(conn), start_response)
        try:
            status, headers = started[0], started[1]
            names = {name.lower() for name, _ in headers}
            chunked = "content-length" not in names and head.method != "HEAD"
            if chunked and head.version != "HTTP/1.1":
                keep, chunked = False, False  # HTTP/1.0: the end of the body is the close
            lines = [f"{head.version} {status}", *(f"{n}: {v}" for n, v in headers)]
            if "date" not in names:
                lines.append(f"Date: {http_date()}")
            if chunked:
                lines.append("Transfer-Encoding: chunked")
            if not keep:
                lines.append("Connection: close")
            elif head.version == "HTTP/1.0":
                lines.append("Connection: keep-alive")
            out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            sent_head = False
            for data in result:
                if not data or head.method == "HEAD":
                    continue
                if chunked:
                    data = b"%x\r\n%s\r\n" % (len(data), data)
                if not sent_head:
                    data, sent_head = out + data, True
                self._write(conn, data)
            if not sent_head:
                self._write(conn, out)
            if chunked:
                self._write(conn, b"0\r\n\r\n")
        except OSError:
            return False
        except errors.StreamAborted:  # logged by the app: close, leaving the body unended
            return False
        finally:
            if hasattr(result, "close"):
                result.close()
        return keep

    def _write(self, conn: _Connection, data: bytes) -> None:
        """Write from an HTTP thread. A client that does not read cannot hold the thread:
        the write may take the header timeout plus its size at the minimum body rate."""
        conn.answering = True
        sock = conn.sock
        if sock.gettimeout() == 0.0:  # still non-blocking from the loop: try without waiting
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):  # most answers fit the socket buffer: no timeout to set
                return
            data = data[sent:]
        sock.settimeout(self.header_timeout + len(data) / self.min_body_rate)
        sock.sendall(data)

    def _send_now(self, conn: _Connection, data: bytes) -> None:
        """Best-effort write from the loop: small answers fit in a fresh socket buffer."""
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def _request_id(self, conn: _Connection) -> str:
        """The id of the request ``conn`` holds: the client's when its head was read."""
        head = conn.head
        if head is None:
            return request_id_of(())
        return request_id_of(next(iter(head.header(name.lower())), None)
                             for name in REQUEST_ID_HEADERS)

    def _route(self, head: Head | None) -> str:
        """The route rule the request would have reached, for the metrics' label."""
        if head is None:
            return NO_ROUTE
        try:
            path = unquote_to_bytes(head.target.partition("?")[0]).decode("latin-1")
            rule, _ = self.wsgi.url_map.bind("localhost").match(path, head.method,
                                                                return_rule=True)
            return rule.rule
        except Exception:  # no such route or method, an odd target: none
            return NO_ROUTE

    def _refuse(self, conn: _Connection, error: errors.ServingError,
                slow_phase: str | None = None) -> None:
        """Answer ``error`` from the loop and close, after a short linger.

        :param slow_phase: ``headers`` or ``body`` for a client refused as too slow.
        """
        head = conn.head
        what = f"{head.method} {head.target}" if head is not None else "-"
        request_id = self._request_id(conn)
        token = logs.request_id.set(request_id)
        try:
            access_log.info('%s "%s" %d (refused: %s)', conn.peer, what, error.status_code,
                            error.message, extra={"status": error.status_code,
                                                  "remote": conn.peer})
        finally:
            logs.request_id.reset(token)
        if self.metrics is not None:
            content_type = None
            if head is not None and head.header("content-type"):
                try:
                    content_type = content_type_of(head.header("content-type")[0])
                except ValueError:
                    content_type = "invalid"
            self.metrics.request_refused(self._route(head), error.status_code, content_type,
                                         slow_phase)
        self._send_now(conn, _response_bytes(error, close=True, request_id=request_id))
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.state = _LINGER
        conn.deadline = time.monotonic() + LINGER_SECONDS
        conn.buf.clear()
        conn.body = bytearray()

    def _close(self, conn: _Connection) -> None:
        self.conns.pop(conn.fd, None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- stopping ----------------------------------------------------------------------

    def _begin_stop(self, now: float) -> None:
        reason = self.runtime.retire_reason
        if self.alive and reason:
            self.retiring = True
            log.warning("worker %s retires: %s; it answers what it holds, then a fresh one "
                        "takes its place", self.pid, reason)
            self.alive = False
            self.stopping_grace = min(self.grace, RETIRE_SECONDS)
        else:
            self.stopping_grace = self.grace
        self.stopping_at = now + self.stopping_grace
        if not self.retiring and self.models.ready:
            # Take what is already queued on the listening socket, so that nothing in the
            # backlog is reset; then stop listening: new connections are refused.
            for listener in self.sockets:
                self._accept_all(listener)
        self._set_listening(False)
        for listener in self.sockets:
            listener.close()
        for conn in list(self.conns.values()):
            if conn.state == _IDLE or (conn.state == _HEAD and not conn.buf and conn.served):
                self._close(conn)

    def _accept_all(self, listener: t.Any) -> None:
        while len(self.conns) < self.max_connections:
            try:
                sock, addr = listener.accept()
            except OSError:
                return
            self._add(sock, addr, listener)

    def _stop_done(self, now: float) -> bool:
        """Whether a stopping worker may exit: nothing left to answer, or no time left."""
        pending = [c for c in self.conns.values() if c.state not in (_IDLE, _LINGER)]
        if not pending:
            return True
        if now < self.stopping_at:
            return False
        # Out of time. Requests waiting on a prediction are answered 503 by their threads;
        # requests still being sent get nothing. Both count as dropped.
        self.dropped = self.runtime.close() + sum(1 for c in pending if c.state != _BUSY)
        deadline = time.monotonic() + 2.0
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
            self._collect_finished()
        self.dropped += self.busy  # answers that could not even be written in time
        return True

    def _exit(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.metrics is not None:
            self.metrics.in_flight.set(0)
            self.metrics.flush()
        if self.dropped:
            log.error("worker %s: %d request(s) unanswered at the end of the %g s %s were "
                      "dropped", self.pid, self.dropped, self.stopping_grace,
                      "retirement" if self.retiring else "grace period")
            if not self.retiring:
                self.app.note_dropped()  # serve exits non-zero
            sys.exit(1)
