"""The WSGI environ of a request, built the same way for every host (gunicorn worker, Ray).

One builder, so that the app sees the same environ whichever host parsed the request:
the path percent-decoded to latin-1 text (PEP 3333), repeated fields joined with commas,
field names with an underscore dropped (``X_Forwarded`` would pass for ``X-Forwarded``
once dashes become underscores), and Transfer-Encoding dropped (the body is whole).
"""

from __future__ import annotations

import io
import sys
import typing as t
from urllib.parse import unquote_to_bytes

from serving.app import ARRIVED_KEY

__all__ = ["build_environ"]


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
