"""The WSGI bridge: how every host (the gunicorn worker, a Ray Serve replica) calls the app.

One bridge, so that the app sees the same environ, and the host gets the same answer,
whichever host parsed the request:

- :func:`build_environ`: the path percent-decoded to latin-1 text (PEP 3333), repeated
  fields joined with commas, field names with an underscore dropped (``X_Forwarded`` would
  pass for ``X-Forwarded`` once dashes become underscores), and Transfer-Encoding dropped
  (the body is whole).
- :func:`call_app`: the app called on it, its ``start_response`` kept (an answer may
  start it late, on its first chunk, as PEP 3333 allows), and the answer handed back as
  an :class:`Answer`: the status, the headers, and the body, whole when the app declared a
  Content-Length, else chunks to stream. The host only frames and writes it.
"""

from __future__ import annotations

import io
import itertools
import sys
import typing as t
from urllib.parse import unquote_to_bytes

from serving.protocols.base import ARRIVED_KEY

__all__ = ["Answer", "build_environ", "call_app"]


def build_environ(*, method: str, path: str, query: str, raw_uri: str, protocol: str,
                  headers: t.Iterable[tuple[str, str]], body: bytes,
                  content_length: str | None, server_name: str, server_port: str,
                  remote_addr: str, remote_port: str, url_scheme: str, multiprocess: bool,
                  arrived: float) -> dict[str, t.Any]:
    """The environ of a request whose body is here, whole.

    :param path: the path as sent, percent-encoded.
    :param headers: ``(lower-case name, value)`` pairs in arrival order.
    :param content_length: what CONTENT_LENGTH says (``None``: no body framing was sent).
    """
    environ: dict[str, t.Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
        "QUERY_STRING": query,
        "RAW_URI": raw_uri,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        # bytes, made once: BytesIO shares it, and reading it whole returns it uncopied.
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        # The body ends where the stream does (a chunked body has no Content-Length).
        "wsgi.input_terminated": True,
        ARRIVED_KEY: arrived,
    }
    for name, value in headers:
        if "_" in name or name == "transfer-encoding" or name == "content-length":
            continue
        if name == "content-type":
            key = "CONTENT_TYPE"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    return environ


class Answer:
    """What the app answered: its status and headers, and its body to be written.

    Iterate it for the body's chunks (the first may be one the app gave while starting
    its answer late); call :meth:`close` when done, written whole or not, so that a
    streamed answer's generator stops (PEP 3333).
    """

    __slots__ = ("status", "headers", "_chunks", "_result")

    def __init__(self, status: str, headers: list[tuple[str, str]],
                 chunks: t.Iterator[bytes], result: t.Iterable[bytes]) -> None:
        #: The status line's text, ``"200 OK"``.
        self.status = status
        #: The headers, as the app gave them, in order.
        self.headers = headers
        self._chunks = chunks
        self._result = result

    @property
    def content_length(self) -> int | None:
        """What Content-Length the app declared; ``None``: the body is streamed (no length).
        Read when asked: the gunicorn worker's framing reads the headers itself."""
        for name, value in self.headers:
            if name.lower() == "content-length" and value.isdigit():
                return int(value)
        return None

    @property
    def status_code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    @property
    def streamed(self) -> bool:
        return self.content_length is None

    def __iter__(self) -> t.Iterator[bytes]:
        return self._chunks

    def read(self) -> bytes:
        """The whole body (for an answer with a Content-Length), then closed."""
        try:
            return b"".join(self._chunks)
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


def call_app(app: t.Callable[..., t.Iterable[bytes]], environ: dict[str, t.Any]) -> Answer:
    """Call the WSGI ``app`` on ``environ``: its answer, nothing written yet.

    :raises: what the app raised (the Flask app answers its own errors; a host treats
        anything else as a bug of ours).
    """
    started: list[t.Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: t.Any = None) -> t.Callable[[bytes], None]:
        # Nothing is written before call_app returns, so a second call (with exc_info, an
        # error while starting) always replaces the first, as PEP 3333 allows until then.
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    chunks = iter(result)
    if not started:  # started late: on the answer's first chunk
        try:
            first = next(chunks, b"")
        except BaseException:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise
        if not started:
            raise RuntimeError("the WSGI app returned without calling start_response")
        chunks = itertools.chain((first,), chunks)
    return Answer(started[0], list(started[1]), chunks, result)


def _no_write(data: bytes) -> None:
    """The legacy ``write()`` of ``start_response``: Flask never calls it."""
    raise RuntimeError("this server does not support WSGI's write(): return the body")
