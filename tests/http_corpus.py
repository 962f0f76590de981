"""gunicorn's HTTP/1.1 request corpus, read as its own loader (``treq.py``) reads it, and a
reader of raw HTTP answers for the tests that send it.

The corpus is ``tests/corpora/http-gunicorn``: a copy of ``../shared/corpora/http-gunicorn``
(gunicorn's tests/requests at commit 65ac1a3, MIT, its LICENSE beside it), so that the
tests run from any checkout."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import httptools

from tests.server_helpers import REPO

CORPUS = REPO / "tests" / "corpora" / "http-gunicorn"


@dataclasses.dataclass
class Case:
    name: str        # e.g. "invalid/chunked_05"
    data: bytes      # the raw request bytes
    options: bool    # whether gunicorn runs it with a non-default option (cfg.set)
    expect: object   # invalid: gunicorn's exception name; valid: its parsed requests


def decode(text: bytes) -> bytes:
    """The corpus's escapes, as its ``treq.py`` decodes them."""
    data = text.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


class _Config:
    def set(self, *_: object) -> None:
        pass


def _valid_expectation(path: Path) -> list[dict]:
    """The requests a valid case holds, from its .py (run with gunicorn's imports faked)."""
    source = re.sub(r"^(from|import) .*$", "", path.read_text(), flags=re.M)
    namespace = {"Config": _Config, "cfg": _Config(), "uri": lambda raw: raw}
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - corpus files, read only
    request = namespace["request"]
    return request if isinstance(request, list) else [request]


def cases(kind: str) -> list[Case]:
    found = []
    for http in sorted((CORPUS / kind).glob("*.http")):
        py = http.with_suffix(".py")
        text = py.read_text()
        if kind == "invalid":
            expect = re.search(r"^request = (\w+)", text, re.M).group(1)
        else:
            expect = _valid_expectation(py)
        found.append(Case(f"{kind}/{http.stem}", decode(http.read_bytes()), "cfg.set" in text,
                          expect))
    return found


@dataclasses.dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class _ResponseCollector:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode().lower(), value.decode("latin-1")))

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = [], bytearray()


def exchange(port: int, data: bytes, timeout: float = 10, half_close: bool = True
             ) -> tuple[list[Answer], bool]:
    """Send ``data`` on a new connection, (half-)close our side, read every answer until the
    server closes. Returns the answers (parsed by llhttp's response parser, which refuses
    a malformed framing) and whether the server closed the connection."""
    collector = _ResponseCollector()
    collector.parser = httptools.HttpResponseParser(collector)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        closed = False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                collector.parser.feed_data(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
    return collector.answers, closed
