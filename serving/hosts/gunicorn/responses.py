"""Writing answers on the gunicorn worker's connections: the app's answer framed as HTTP/1.1
(:func:`write_answer`), and our JSON error answers written by the loop itself
(:func:`error_response`) for requests refused before the app sees them."""

from __future__ import annotations

import logging
import time
import typing as t
from email.utils import formatdate
from http import HTTPStatus

import orjson

from serving import errors
from serving.hosts.gunicorn.http1 import Request, frame_response
from serving.protocols.base import RESPONSE_ID_HEADER
from serving.http.bridge import Answer

__all__ = ["error_response", "http_date", "write_answer"]

log = logging.getLogger(__name__)

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


def error_response(error: errors.ServingError, close: bool, request_id: str) -> bytes:
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


def write_answer(answer: Answer, request: Request, keep: bool,
                 write: t.Callable[[bytes], None]) -> bool:
    """Frame ``answer`` for ``request`` and write it with ``write``; whether the connection
    stays open (``keep``, unless the framing or a wrong length says otherwise).

    An answer longer than its Content-Length is cut there, one shorter is left short;
    either way the connection closes, so that the client is not desynchronised.
    The head goes out with the first chunk (one write for most answers).

    :raises OSError: the client went away; :class:`serving.errors.StreamAborted`: a
        streamed answer failed midway (the app logged it).
    """
    out, framing, length, keep = frame_response(request.version, request.method,
                                                answer.status, answer.headers, keep,
                                                http_date())
    sent_head = False
    sent = 0
    for data in answer:
        if not data or framing == "none":
            continue
        if framing == "length":
            if sent + len(data) > length:
                log.error("%s %s: the answer is longer than its Content-Length %d; cut there, "
                          "and the connection closed", request.method, request.target_text,
                          length)
                data = data[:length - sent]
                keep = False
            sent += len(data)
        elif framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if not sent_head:
            data, sent_head = out + data, True
        write(data)
        if not keep and framing == "length" and sent == length:
            break
    if not sent_head:
        write(out)
    if framing == "chunked":
        write(b"0\r\n\r\n")
    elif framing == "length" and sent < length:
        log.error("%s %s: the answer ended %d bytes short of its Content-Length; the "
                  "connection is closed", request.method, request.target_text, length - sent)
        keep = False
    return keep
