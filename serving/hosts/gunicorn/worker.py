"""The gunicorn worker: an event loop reads each request whole before a thread sees it.

Why a worker of our own: gunicorn's gthread worker hands a connection to a
thread as soon as its first byte arrives, and the thread then blocks reading
headers and body. Eight clients sending a byte a second hold every thread, and
nothing ever times them out. Here one loop per worker (``selectors``) reads
every connection without blocking and under deadlines:

- the head (request line and headers) within ``SERVING_HEADER_TIMEOUT``;
- the body at ``SERVING_MIN_BODY_RATE_KB`` or faster after its first second;
- the bytes parsed as they arrive by llhttp with our limits and RFC 9112 checks
  on top (``serving.hosts.gunicorn.http1``): a malformed, ambiguous or oversized request is
  refused before its body is kept, and requests pipelined behind one another
  are answered in order.

A client past these limits gets our JSON error (400, 408, 413, 414, 417, 431,
501, 505) and its connection is closed. Only a complete request goes to one of the
worker's HTTP threads, which runs the Flask app and writes the answer. A slow
client costs a socket and its buffer, never a thread, and each worker holds at
most ``SERVING_MAX_CONNECTIONS``. A request for a bidirectional stream (a WebSocket,
:mod:`serving.hosts.gunicorn.websocket`) gets a thread of its own for the stream's
life instead, at most ``SERVING_MAX_STREAMS`` a worker.

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
import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
import typing as t

from gunicorn.workers.base import Worker

from serving import errors
from serving.hosts.gunicorn.accept import AcceptPolicy
from serving.hosts.gunicorn.balance import NOT_TAKING
from serving.hosts.gunicorn.connection import (
    BUSY,
    CLOSE,
    CONTINUE,
    IDLE,
    LINGER,
    STREAM,
    Connection,
)
from serving.hosts.gunicorn.http1 import Request
from serving.hosts.gunicorn.responses import error_response, write_answer
from serving.hosts.gunicorn.websocket import (
    STREAM_PATH,
    StreamLimits,
    StreamServices,
    is_stream_request,
    serve_stream,
)
from serving.http.app import route_of
from serving.protocols.base import REQUEST_ID_HEADERS, request_id_of
from serving.http.bridge import build_environ, call_app
from serving.contract.negotiation import content_type_of
from serving.runtime import logs
from serving.runtime.metrics import NO_ROUTE

__all__ = ["ServingWorker", "request_environ"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

#: How often the loop looks at deadlines and tells the master it is alive.
TICK_SECONDS = 0.25
#: How soon a worker held back from listening only to keep the workers even looks again.
BALANCE_POLL_SECONDS = 0.01
#: How long a retiring worker waits for requests still being sent.
RETIRE_SECONDS = 10.0


def _port_of(listener: t.Any) -> int | str:
    try:
        address = listener.getsockname()
    except OSError:
        return ""
    return address[1] if isinstance(address, tuple) else ""


def request_environ(request: Request, body: bytes, *, server: t.Any, port: str, peer: str,
                    addr: t.Any) -> dict[str, t.Any]:
    """The WSGI environ of a request llhttp read whole (:mod:`serving.http.bridge`).

    :param server: the listener's address; ``port``: its port as text.
    :param peer: the client's address as logged; ``addr``: the socket's peer address.
    """
    framed = request.chunked or request.length or body or request.header("content-length")
    return build_environ(
        method=request.method, path=request.path, query=request.query,
        raw_uri=request.target.decode("ascii"), protocol=request.version,
        headers=request.headers, body=body,
        content_length=str(len(body)) if framed else None,
        server_name=str(server[0]) if isinstance(server, tuple) else "localhost",
        server_port=port, remote_addr=peer,
        remote_port=str(addr[1]) if isinstance(addr, tuple) else "",
        url_scheme="http", multiprocess=True, arrived=request.arrived)


class ServingWorker(Worker):
    """The gunicorn worker class (``worker_class``); see the module's text."""

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
        #: HTTP threads that take every request; the rest (spare: the threads batching adds)
        #: take requests only while every core one is busy and a batcher wants them.
        self.core_threads = min(config.threads, self.threads)
        self.core_busy = 0  # requests handed to the core threads, answering or queued
        self.batchers = self._batchers()
        self.policy = AcceptPolicy(self.threads, self.max_connections)
        #: The workers' connection counts, shared (None with one worker: nothing to even).
        self.loads = application.loads
        self.index = getattr(self, "index", 0)  # given by the master's pre_fork hook
        self.fewest_elsewhere: int | None = None
        self.grace = float(config.timeout)
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, Connection] = {}
        self.busy = 0
        self.listening = False
        self.stopping_at: float | None = None
        self.retiring = False
        self.dropped = 0
        self.server_addr = self.sockets[0].getsockname() if self.sockets else ("", 0)
        # Each listener's port, for SERVER_PORT: /metrics may have a port of its own.
        self.ports = {id(listener): str(_port_of(listener)) for listener in self.sockets}
        self.tasks: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.spare_tasks: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        #: (connection, keep it open, answered on a spare thread)
        self.finished: queue.SimpleQueue[tuple[Connection, bool, bool]] = queue.SimpleQueue()
        #: Bidirectional streams: how many are open, the ones that ended (the loop closes
        #: their sockets), and the flag that tells them the worker is stopping.
        self.streams = 0
        self.max_streams = config.max_streams
        self.stream_limits = StreamLimits.from_config(config)
        #: The port that serves /metrics alone, when it has one: no streams there.
        self.metrics_only_port = (str(config.metrics_port) if config.metrics_port is not None
                                  else None)
        self.ended_streams: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.streams_stopping = threading.Event()
        self.keys = None
        if config.token_auth and config.model_store is not None:
            from serving.protocols.torchserve.tokens import KeyFile

            self.keys = KeyFile(config.key_file, config.token_expiration_min)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        for index in range(self.threads):
            threading.Thread(target=self._http_thread, args=(index >= self.core_threads,),
                             name=f"http-{index}", daemon=True).start()
        super().init_process()  # loads the app (post_fork ran already), then calls run()

    def _batchers(self) -> list[t.Any]:
        """The batchers of the loaded models that batch: a model whose predict takes no
        batches has a batcher that never runs, and must not draw on the spare threads
        (on them, one by one cost up to a third more CPU a request)."""
        return [pipeline.batcher for pipeline in self.models.loaded()
                if pipeline.batcher is not None and pipeline.predicts_batches]

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, "wake")  # signals
        for listener in self.sockets:  # accept() must never block the loop
            listener.setblocking(False)
        policy = self.policy
        sessions = self.wsgi.extensions["serving.invocations"].sessions
        # The protocols' own servers (gRPC), in this worker: grpcio is imported only now,
        # after fork (its threads do not survive one).
        self.besides = [beside for beside in (protocol.beside() for protocol in
                                              self.wsgi.extensions["serving.protocols"])
                        if beside is not None]
        self.besides_stopped: list[threading.Event] = []
        next_tick = 0.0
        while True:
            now = time.monotonic()
            if now >= next_tick:
                # Once a tick, not once per event: under load the loop turns thousands of
                # times a second, and these are a syscall and a walk over every connection.
                next_tick = now + TICK_SECONDS
                self.notify()
                self._expire(now)
                self.batchers = self._batchers()  # models load lazily
                if sessions is not None:
                    sessions.sweep()  # once a minute; never waits on a session
                if self.metrics is not None:
                    self.metrics.in_flight.set(self.busy)
                    self.metrics.streams_open.set(self.streams)
                    self.metrics.flush()
            if self.stopping_at is None and (not self.alive or self.runtime.retire_reason):
                self._begin_stop(now)
            if self.stopping_at is not None and self._stop_done(now):
                break
            if self.ppid != os.getppid():
                log.info("worker %s: the master is gone; exiting", self.pid)
                break
            can_take = policy.can_take(self.stopping_at is not None, self.models.ready,
                                       len(self.conns))
            room = policy.has_room(can_take, self.busy, now)
            if self.loads is not None:
                self.loads.publish(self.index, len(self.conns) if room else NOT_TAKING, now)
                self.fewest_elsewhere = self.loads.fewest_elsewhere(self.index, now)
            fair = policy.fair(len(self.conns), self.fewest_elsewhere)
            self._set_listening(room and fair)
            if can_take and not room and policy.saturated_accept_due(now):
                for listener in self.sockets:
                    self._accept(listener, 1)
            try:
                # Held back only to keep the workers even: look again soon, since the
                # others' counts change without waking this loop.
                events = self.selector.select(TICK_SECONDS if fair or not room
                                              else BALANCE_POLL_SECONDS)
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

    def _accept(self, listener: t.Any, count: int | None = None) -> None:
        for _ in range(count or self.policy.how_many(self.busy, time.monotonic(),
                                                     len(self.conns), self.fewest_elsewhere)):
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
        conn = Connection(sock, addr, time.monotonic(), self.header_timeout,
                          self.ports.get(id(listener), ""), self.max_body)
        self.conns[conn.fd] = conn
        self.policy.accepted(conn)
        if self.loads is not None:  # at once: the others may be accepting this very moment
            self.loads.publish(self.index, len(self.conns), conn.accepted)
        self.selector.register(sock, selectors.EVENT_READ, conn)

    # -- reading a request -------------------------------------------------------------

    def _on_readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == LINGER:
            if not data:
                self._close(conn)
            return
        now = time.monotonic()
        conn.on_data(data, now, self.header_timeout)
        if not data and not conn.reader.ready:  # the client closed, between requests
            self._close(conn)
            return
        self._advance(conn, now)

    def _advance(self, conn: Connection, now: float) -> None:
        """Answer the next complete request, refuse with the error that ends the
        connection, or do what the connection's state says next."""
        step = conn.next_step(now, self.header_timeout)
        if isinstance(step, Request):
            self._dispatch(conn, step)
        elif isinstance(step, errors.ServingError):
            self._refuse(conn, step)
        elif step == CLOSE:
            self._close(conn)
        elif step == CONTINUE:
            self._send_now(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _expire(self, now: float) -> None:
        """Apply the deadlines: idle, head, body rate, linger."""
        for conn in list(self.conns.values()):
            what = conn.expiry(now, self.header_timeout, self.min_body_rate)
            if what == CLOSE:
                self._close(conn)
            elif what is not None:
                error, phase = what
                self._refuse(conn, error, slow_phase=phase)

    # -- answering ---------------------------------------------------------------------

    def _dispatch(self, conn: Connection, request: Request) -> None:
        if request.upgrade or request.path == STREAM_PATH:
            if is_stream_request(request) and conn.port != self.metrics_only_port:
                self._open_stream(conn, request)
                return
        if conn.take(request):  # not busy before: the loop stops watching it
            self.selector.unregister(conn.sock)
            self.busy += 1
        # A spare thread only while the core ones are all taken and a batch is gathering:
        # else the request queues for a core thread, which stays warm, rather than waking
        # a cold one (a wake-up per request cost more than the wait). A worker whose
        # batches are no larger than half its threads has no spare ones at all (its
        # request would wait in their queue for ever).
        if self.core_busy >= self.core_threads and self.threads > self.core_threads \
                and any(batcher.wants_threads for batcher in self.batchers):
            self.spare_tasks.put(conn)
        else:
            self.core_busy += 1
            self.tasks.put(conn)

    def _http_thread(self, spare: bool) -> None:
        tasks = self.spare_tasks if spare else self.tasks
        if spare:
            self.runtime.spare_thread()
        while True:
            conn = tasks.get()
            keep = False
            try:
                keep = self._respond(conn)
            except BaseException:  # SystemExit from user code too: the thread must live on
                log.exception("answering %s %s failed", conn.request.method,
                              conn.request.target_text)
                if not conn.answering:
                    try:
                        self._write(conn, error_response(
                            errors.ServingError("internal error: the server failed to answer"),
                            close=True, request_id=self._request_id(conn)))
                    except OSError:
                        pass
            self.finished.put((conn, keep, spare))
            try:
                os.write(self.wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so the loop is awake anyway


    def _open_stream(self, conn: Connection, request: Request) -> None:
        """Hand ``conn`` to a thread of its own for a bidirectional stream, or refuse with
        503 when the worker holds its most streams or is stopping."""
        if conn.state == BUSY:  # pipelined behind an answer: the loop takes it back first
            self.busy -= 1
            conn.state = IDLE
            try:
                self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):
                self._close(conn)
                return
        if self.streams >= self.max_streams or self.stopping_at is not None:
            conn.reader.failed = request
            self._refuse(conn, errors.ServiceUnavailable(
                "this worker is stopping" if self.stopping_at is not None else
                f"this worker holds {self.streams} streams (SERVING_MAX_STREAMS)"))
            return
        self.selector.unregister(conn.sock)
        conn.state = STREAM
        conn.request = request
        self.streams += 1
        services = StreamServices(invocations=self.wsgi.extensions["serving.invocations"],
                                  limits=self.stream_limits, stopping=self.streams_stopping,
                                  write=lambda data: self._write(conn, data),
                                  metrics=self.metrics, keys=self.keys)
        threading.Thread(target=self._stream_thread, args=(conn, request, services),
                         name=f"stream-{conn.fd}", daemon=True).start()

    def _stream_thread(self, conn: Connection, request: Request,
                       services: StreamServices) -> None:
        try:
            serve_stream(conn.sock, request, conn.reader.leftover, services, conn.peer)
        finally:  # the loop closes the socket: its descriptor must not be reused before
            self.ended_streams.put(conn)
            try:
                os.write(self.wake_w, b"\0")
            except BlockingIOError:
                pass

    def _collect_finished(self) -> None:
        while not self.ended_streams.empty():
            self.streams -= 1
            self._close(self.ended_streams.get_nowait())
        while True:
            try:
                conn, keep, spare = self.finished.get_nowait()
            except queue.Empty:
                return
            if not spare:
                self.core_busy -= 1
            self.policy.finished(time.monotonic())
            conn.answered()
            reader = conn.reader
            if not keep or self.stopping_at is not None:
                self.busy -= 1
                self._close(conn)
                continue
            if reader.ready and isinstance(reader.ready[0], Request):
                # Pipelined: the next request is here already; answer it at once.
                self._dispatch(conn, reader.ready.popleft())
                continue
            self.busy -= 1
            try:
                if conn.sock.gettimeout() != 0.0:  # a slow write set a timeout
                    conn.sock.setblocking(False)
                self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):
                self._close(conn)
                continue
            now = time.monotonic()
            conn.wait_for_next(now, self.cfg.keepalive)
            self._advance(conn, now)  # an error queued behind it, or a request half-read

    def _environ(self, conn: Connection) -> dict[str, t.Any]:
        request = conn.request
        body, request.body = request.body, b""  # the environ's input holds it, no one else
        return request_environ(request, body, server=self.server_addr, port=conn.port,
                               peer=conn.peer, addr=conn.addr)

    def _respond(self, conn: Connection) -> bool:
        """Run the app on a complete request and write its answer; True to keep the connection."""
        request = conn.request
        reader = conn.reader
        # The last answer before the parser stopped taking requests says it closes.
        keep = (request.keep_alive and self.stopping_at is None
                and not (reader.closed and not reader.ready))
        answer = call_app(self.wsgi, self._environ(conn))
        try:
            return write_answer(answer, request, keep, lambda data: self._write(conn, data))
        except OSError:
            return False
        except errors.StreamAborted:  # logged by the app: close, leaving the body unended
            return False
        finally:
            answer.close()

    def _write(self, conn: Connection, data: bytes) -> None:
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

    def _send_now(self, conn: Connection, data: bytes) -> None:
        """Best-effort write from the loop: small answers fit in a fresh socket buffer."""
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def _request_id(self, conn: Connection) -> str:
        """The id of the request ``conn`` holds: the client's when its head was read."""
        request = conn.request
        if request is None:
            return request_id_of(())
        return request_id_of(next(iter(request.header(name.lower())), None)
                             for name in REQUEST_ID_HEADERS)

    def _route(self, request: Request | None) -> str:
        """The route rule the request would have reached, for the metrics' label."""
        if request is None or not request.method:
            return NO_ROUTE
        return route_of(self.wsgi, request.method, request.path)

    def _refuse(self, conn: Connection, error: errors.ServingError,
                slow_phase: str | None = None) -> None:
        """Answer ``error`` from the loop and close, after a short linger.

        :param slow_phase: ``headers`` or ``body`` for a client refused as too slow.
        """
        request = conn.reader.failed or conn.reader.current
        conn.request = request if request is not None and request.headers_done else None
        what = f"{request.method} {request.target_text}" \
            if request is not None and request.method else "-"
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
            if conn.request is not None and conn.request.header("content-type"):
                try:
                    content_type = content_type_of(conn.request.header("content-type")[0])
                except ValueError:
                    content_type = "invalid"
            self.metrics.request_refused(self._route(conn.request), error.status_code,
                                         content_type, slow_phase)
        self._send_now(conn, error_response(error, close=True, request_id=request_id))
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.linger(time.monotonic())

    def _close(self, conn: Connection) -> None:
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
        self.streams_stopping.set()  # each stream closes with 1001 within a quarter second
        # gRPC: no new call; those in flight finish within the grace period.
        self.besides_stopped = [beside.stop(self.stopping_grace) for beside in self.besides]
        if not self.retiring and self.models.ready:
            # Take what is already queued on the listening socket, so that nothing in the
            # backlog is reset; then stop listening: new connections are refused.
            for listener in self.sockets:
                self._accept_all(listener)
        self._set_listening(False)
        for listener in self.sockets:
            listener.close()
        for conn in list(self.conns.values()):
            if conn.between_requests:
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
        pending = [c for c in self.conns.values() if c.state not in (IDLE, LINGER)]
        besides_busy = not all(stopped.is_set() for stopped in self.besides_stopped)
        if not pending and not besides_busy:
            return True
        if now < self.stopping_at:
            return False
        if not pending:
            return True  # gRPC's own stop ends what it still holds at its grace
        # Out of time. Requests waiting on a prediction are answered 503 by their threads;
        # requests still being sent get nothing. Both count as dropped.
        self.dropped = self.runtime.close() + sum(1 for c in pending
                                                  if c.state not in (BUSY, STREAM))
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
            self.metrics.streams_open.set(0)
            self.metrics.flush()
        if self.dropped:
            log.error("worker %s: %d request(s) unanswered at the end of the %g s %s were "
                      "dropped", self.pid, self.dropped, self.stopping_grace,
                      "retirement" if self.retiring else "grace period")
            if not self.retiring:
                self.app.note_dropped()  # serve exits non-zero
            sys.exit(1)
