"""Clients for the fault tests and ``benchmarks/faults.py``: misbehaving ones, and the
well-behaved one whose answers show what the faults cost. 127.0.0.1 only."""

from __future__ import annotations

import selectors
import socket
import threading
import time

import requests

REQUEST_HEAD = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")


class SlowClients:
    """``count`` connections that each send a request one byte every ``interval`` seconds.

    ``kind="headers"`` trickles the whole request from its first byte; ``kind="body"``
    sends the head at once and trickles a 1000-byte body. A connection the server
    closes is opened again, so ``count`` stay open for as long as this runs (at most
    ``max_seconds``). ``answers`` counts the status codes the server sent them.
    """

    def __init__(self, port: int, count: int, kind: str = "headers", interval: float = 1.0,
                 max_seconds: float = 120) -> None:
        assert kind in ("headers", "body")
        self.port, self.count, self.kind, self.interval = port, count, kind, interval
        self.max_seconds = max_seconds
        self.answers: dict[int, int] = {}
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"slow-{kind}", daemon=True)

    def _payload(self) -> tuple[bytes, bytes]:
        """What is sent at once, and what is trickled."""
        if self.kind == "headers":
            return b"", REQUEST_HEAD % 9 + b"[[1,2,3]]"
        return REQUEST_HEAD % 1000, b"[" + b"1," * 499 + b"1"

    def _open(self, selector: selectors.BaseSelector) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        first, trickle = self._payload()
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, [trickle, 0])
        self.opened += 1

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        stop_at = time.monotonic() + self.max_seconds
        try:
            for _ in range(self.count):
                self._open(selector)
            while not self._stop.is_set() and time.monotonic() < stop_at:
                # Anything readable is an answer (a 408) or a close: count it, reopen.
                for key, _ in selector.select(0):
                    self._finish(selector, key.fileobj)
                for key in list(selector.get_map().values()):
                    trickle, position = key.data
                    if position < len(trickle):
                        try:
                            key.fileobj.send(trickle[position:position + 1])
                            key.data[1] += 1
                        except OSError:
                            self._finish(selector, key.fileobj)
                self._stop.wait(self.interval)
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            selector.close()

    def _finish(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 "):
            status = int(data[9:12])
            self.answers[status] = self.answers.get(status, 0) + 1
        selector.unregister(sock)
        sock.close()
        if not self._stop.is_set():
            try:
                self._open(selector)
            except OSError:
                pass

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class SteadyClient:
    """Good requests one after another, each on a new connection, until stopped.

    ``statuses`` holds each answer's status, or the exception's name.
    """

    def __init__(self, url: str, max_seconds: float = 120) -> None:
        self.url, self.max_seconds = url, max_seconds
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady", daemon=True)

    def _run(self) -> None:
        stop_at = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < stop_at:
            try:
                self.statuses.append(requests.post(self.url, json=[1], timeout=20).status_code)
            except requests.RequestException as exc:
                self.statuses.append(type(exc).__name__)

    def failed(self) -> str:
        return f"{sum(s != 200 for s in self.statuses)} of {len(self.statuses)}"

    def __enter__(self) -> SteadyClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
