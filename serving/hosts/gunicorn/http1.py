"""HTTP/1.1 on the wire: requests parsed by llhttp (httptools), answers framed by RFC 9112.

The parser is ``httptools.HttpRequestParser``: llhttp, Node.js's parser, in C, strict by
default and hardened against the request-smuggling shapes (Content-Length with
Transfer-Encoding, a Transfer-Encoding whose last coding is not chunked, duplicate or
non-digit Content-Length, bare CR or LF, obs-fold, whitespace before a colon or around a
chunk size, malformed chunk extensions, chunk data not ended by CRLF, control characters
in the target and in field values). We chose it over h11 and our old hand-written parser
by measuring them on our requests (BENCHMARKS.md, "HTTP/1.1 parser"): a request and its
answer cost about 1.4 µs in llhttp, 9.5 µs in the old parser and 40 µs in h11.

What llhttp does not decide is ours, on top (``Request`` and ``RequestReader``):

- limits, checked before the bytes are kept: the request line (414), each field, the
  number of fields and the head as a whole (431), the body (413), and every byte of a
  request on the wire, chunk-size lines, chunk extensions and trailers included, against
  the head limit plus the body limit (413);
- RFC 9112 MUSTs llhttp leaves to the server: exactly one ``Host`` in HTTP/1.1 (and at
  most one in 1.0); HTTP versions 1.0 and 1.1 only (505, and 400 for HTTP/0.9); no
  Transfer-Encoding in HTTP/1.0 (400: its framing is faulty); trailers that carry framing,
  routing or content fields (400); request targets in origin-form, absolute-form for http
  and https (routed by their path), ``*`` for OPTIONS only, printable ASCII only;
- policy: a transfer coding other than chunked is 501 (we do not decode gzip on the
  wire); CONNECT is 501 (this is an origin server, not a proxy); an ``Expect`` other than
  100-continue is 417; an ``Upgrade`` is marked on its request (``Request.upgrade``, the
  bytes read after its head kept in ``RequestReader.leftover``) and nothing after it is
  parsed: the worker hands a WebSocket upgrade at a stream path to
  :mod:`serving.hosts.gunicorn.websocket`, and answers any other as plain HTTP, then
  closes (RFC 9110 7.8 lets a server ignore it; the bytes after it are not HTTP);
- pipelining: the parser takes every request a read brings, in order, at most
  ``MAX_PIPELINED`` ahead of the one being answered; an error after good requests is
  answered after their answers, then the connection closes.

Answers: :func:`frame_response` decides how a body is delimited (none for HEAD, 1xx, 204
and 304; Content-Length; chunked for HTTP/1.1; the close for HTTP/1.0), the one place
that does. The tests read our answers with h11, an independent parser, to check it.
"""

from __future__ import annotations

import collections
import typing as t
from urllib.parse import urlsplit

import httptools

from serving import errors

__all__ = ["RequestReader", "Request", "frame_response", "MAX_REQUEST_LINE", "MAX_FIELD_BYTES",
           "MAX_FIELDS", "MAX_HEAD_BYTES", "MAX_PIPELINED"]

#: Longest request target; past it: 414.
MAX_REQUEST_LINE = 8190
#: Longest header field (name and value), and most fields, trailers included; past: 431.
MAX_FIELD_BYTES = 8190
MAX_FIELDS = 100
#: Most bytes of a request head as a whole; past it: 431. A request's bytes on the wire
#: (head, chunk framing, extensions, trailers) are at most this plus the body limit: 413.
MAX_HEAD_BYTES = 64 * 1024
#: Most complete requests parsed ahead of the one being answered. A read that brings more
#: has them dropped, and the connection closes after the last of these is answered (a
#: client must be ready to retry requests that a closed connection left unanswered).
MAX_PIPELINED = 32

#: Trailer fields that would change how the request is framed, routed, authorised or
#: read (RFC 9110 6.5.1): refused. Others are read and dropped (WSGI has no trailers).
FORBIDDEN_TRAILERS = frozenset({
    "host", "content-length", "transfer-encoding", "content-type", "content-encoding",
    "content-range", "connection", "keep-alive", "upgrade", "te", "trailer", "expect",
    "authorization", "proxy-authorization", "cookie", "max-forwards", "range",
    "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
    "cache-control", "pragma", "x-amzn-sagemaker-target-model",
})
#: Bytes a request target may hold: printable ASCII (RFC 9112 3.2, RFC 3986).
_TARGET_BYTES = bytes(range(0x21, 0x7F))
_NO_BODY_STATUSES = frozenset({204, 304})


class _PipelineFull(Exception):
    """Raised in the parser's callback when MAX_PIPELINED requests wait already."""


class Request:
    """One complete request: what the loop frames and the WSGI environ is made of."""

    __slots__ = ("method", "target", "version", "headers", "path", "query", "body",
                 "keep_alive", "expect_continue", "chunked", "length", "headers_done",
                 "arrived", "body_started", "continued", "upgrade")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "HTTP/1.1"
        #: (lower-case name, value) in arrival order; values with their surrounding
        #: whitespace taken off (RFC 9110 5.5), bytes past ASCII as latin-1.
        self.headers: list[tuple[str, str]] = []
        self.path = "/"  # percent-encoded, as sent; the WSGI bridge decodes it
        self.query = ""
        self.body: bytes | bytearray = b""
        self.keep_alive = True
        self.expect_continue = False
        self.chunked = False
        self.length = 0  # the declared Content-Length (0 when chunked or none)
        self.headers_done = False
        self.arrived = 0.0  # when its first byte was read
        self.body_started = 0.0
        self.continued = False  # whether 100 Continue went out
        #: Whether llhttp read it as a protocol upgrade (Connection: upgrade, Upgrade: …):
        #: the last request of its connection in HTTP/1.1.
        self.upgrade = False

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def target_text(self) -> str:
        return self.target.decode("ascii", "backslashreplace")


class RequestReader:
    """Feeds one connection's bytes to llhttp and keeps its complete requests, in order.

    ``ready`` holds complete :class:`Request` objects and, last, at most one
    :class:`serving.errors.ServingError`: the answer that ends the connection. Once
    ``closed``, nothing more is parsed (after an error, an upgrade, a request that
    closes, or a full pipeline).
    """

    __slots__ = ("parser", "max_body", "ready", "current", "failed", "raw", "closed", "now",
                 "leftover", "_completed", "_fields", "_head_bytes", "_body_bytes", "_error",
                 "_full")

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.ready: collections.deque[Request | errors.ServingError] = collections.deque()
        self.current: Request | None = None  # the request being received
        self.failed: Request | None = None  # the one that was being received at an error
        #: Bytes of the current request seen so far (undercounted by at most the rest of
        #: a read in which an earlier request ended: a bound, not an exact figure).
        self.raw = 0
        self.closed = False
        self.now = 0.0
        #: After an upgrade: the bytes read past its head (the new protocol's first ones).
        self.leftover = b""
        self._completed = False
        self._fields = 0
        self._head_bytes = 0
        self._body_bytes = 0
        self._error: errors.ServingError | None = None
        self._full = False

    def feed(self, data: bytes, now: float) -> None:
        """Parse ``data``; complete requests (and an error that ends the connection) go to
        ``ready``. Never raises for anything a client sends."""
        if self.closed:
            return  # after the request that ends the connection: discarded
        self.now = now
        self._completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0]:] if exc.args else b"")
        except httptools.HttpParserError as exc:
            self._failed(exc)
        if self.closed:
            self.current = None
            return
        self.raw = self.raw + len(data) if not self._completed else 0
        current = self.current
        if current is None:
            return
        if not current.headers_done:
            if self.raw > MAX_HEAD_BYTES:
                self._end(errors.HeadersTooLarge(
                    f"the request head is over {MAX_HEAD_BYTES} bytes"))
        elif self.raw > MAX_HEAD_BYTES + self.max_body:
            self._end(errors.PayloadTooLarge(self.max_body))

    def end_of_input(self) -> None:
        """The client closed its side: a request it began and did not finish is a 400."""
        current = self.current
        if self.closed or current is None:
            return
        if current.headers_done:
            expected = ("its chunked end" if current.chunked else
                        f"the {current.length} bytes its Content-Length declared")
            self._end(errors.BadRequest(
                f"the body ended after {self._body_bytes} bytes, before {expected}"))
        else:
            self._end(errors.BadRequest("the connection closed before the request head ended"))

    def _end(self, error: errors.ServingError) -> None:
        self.failed = self.current
        self.ready.append(error)
        self.closed = True
        self.current = None

    def _failed(self, exc: httptools.HttpParserError) -> None:
        if self.closed:  # llhttp refuses bytes after a request that closes: nothing to say
            return
        error = self._error
        if error is None and self._full:
            self.closed = True
            return
        if error is None:
            reason = str(exc) or "malformed"
            if isinstance(exc, httptools.HttpParserInvalidMethodError):
                error = errors.BadRequest(f"invalid request line: {reason} (the method is "
                                          "unknown or malformed)")
            elif isinstance(exc, httptools.HttpParserInvalidURLError):
                error = errors.BadRequest(f"invalid request target: {reason}")
            else:
                error = errors.BadRequest(f"invalid request: {reason}")
        self._end(error)

    def _upgraded(self, rest: bytes) -> None:
        # llhttp stops at an Upgrade (or CONNECT) head, taking no body: what follows is
        # another protocol. The worker takes it from here (a WebSocket stream, or a plain
        # HTTP answer and a close); one that declared a body would be answered without it,
        # so it is refused instead.
        if self.closed:
            return
        last = self.ready[-1] if self.ready and self.current is None else None
        if isinstance(last, Request) and not (last.chunked or last.length):
            last.upgrade = True
            self.leftover = rest
            self.closed = True
            return
        if isinstance(last, Request):
            self.ready.pop()
        self._end(errors.BadRequest("a protocol upgrade with a body is not served"))

    # -- llhttp's callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if len(self.ready) >= MAX_PIPELINED:
            self._full = True
            raise _PipelineFull
        self.current = Request()
        self.current.arrived = self.now
        self._fields = 0
        self._head_bytes = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        current = self.current
        current.target += url
        if len(current.target) > MAX_REQUEST_LINE:
            self._raise(errors.URITooLong(f"the request target is over {MAX_REQUEST_LINE} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._fields += 1
        self._head_bytes += size + 4
        if size > MAX_FIELD_BYTES:
            self._raise(errors.HeadersTooLarge(f"a header field is over {MAX_FIELD_BYTES} bytes"))
        if self._fields > MAX_FIELDS:
            self._raise(errors.HeadersTooLarge(f"more than {MAX_FIELDS} header fields"))
        if self._head_bytes > MAX_HEAD_BYTES:
            self._raise(errors.HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes"))
        key = name.decode("ascii").lower()  # llhttp let only token bytes through
        current = self.current
        if current.headers_done:  # a trailer field
            if key in FORBIDDEN_TRAILERS:
                self._raise(errors.BadRequest(f"the trailer field {key} is not allowed"))
            return
        current.headers.append((key, value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        current, parser = self.current, self.parser
        current.headers_done = True
        current.body_started = self.now
        version = parser.get_http_version()
        if version == "1.1":
            current.version = "HTTP/1.1"
        elif version == "1.0":
            current.version = "HTTP/1.0"
        elif version == "0.9":
            self._raise(errors.BadRequest("an HTTP/0.9 request (no HTTP version) is not served"))
        else:
            self._raise(errors.ServingError(f"HTTP version HTTP/{version} is not supported",
                                            status_code=505))
        method = current.method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            self._raise(errors.ServingError("CONNECT is not served: this is an origin server, "
                                            "not a proxy", status_code=501))
        self._route_target(current, method)
        hosts = transfer = types = expect = 0
        for key, value in current.headers:
            if key == "host":
                hosts += 1
            elif key == "transfer-encoding":
                transfer += 1
            elif key == "content-length":
                current.length = int(value)  # llhttp checked: digits, one field, no overflow
            elif key == "content-type":
                types += 1
            elif key == "expect":
                expect += 1
        if hosts > 1 or (hosts == 0 and current.version == "HTTP/1.1"):
            self._raise(errors.BadRequest(
                "an HTTP/1.1 request needs exactly one Host header field" if hosts != 1 else
                "a request may have one Host header field"))
        if types > 1:  # which decoder would it be? (a singleton field, RFC 9110 8.3)
            self._raise(errors.BadRequest("a request may have one Content-Type header field"))
        if transfer:
            if current.version == "HTTP/1.0":
                self._raise(errors.BadRequest("Transfer-Encoding is not allowed in HTTP/1.0: "
                                              "send a Content-Length"))
            codings = [c.strip(" \t").lower()
                       for c in ",".join(current.header("transfer-encoding")).split(",")]
            if codings[-1] != "chunked":  # the body's length cannot be known: RFC 9112 6.3
                sent = ", ".join(current.header("transfer-encoding"))
                self._raise(errors.BadRequest(f"invalid `Transfer-Encoding` {sent!r}: chunked "
                                              "must be the last coding"))
            if codings != ["chunked"]:
                self._raise(errors.ServingError(
                    f"Transfer-Encoding {', '.join(current.header('transfer-encoding'))!r} is "
                    "not supported; send chunked or a Content-Length", status_code=501))
            current.chunked = True
        elif current.length > self.max_body:
            self._raise(errors.PayloadTooLarge(self.max_body, current.length))
        if expect:
            values = current.header("expect")
            if [e.lower() for e in values] != ["100-continue"]:
                self._raise(errors.ServingError(f"Expect {', '.join(values)!r} is not supported",
                                                status_code=417))
            current.expect_continue = current.version == "HTTP/1.1"
        current.keep_alive = parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._raise(errors.PayloadTooLarge(self.max_body))
        current = self.current
        if not current.body:
            current.body = data  # the usual case: the whole body in one piece, uncopied
        else:
            if type(current.body) is bytes:
                current.body = bytearray(current.body)
            current.body += data

    def on_message_complete(self) -> None:
        current = self.current
        if type(current.body) is not bytes:
            current.body = bytes(current.body)  # one copy now; the WSGI input shares it
        self.ready.append(current)
        self.current = None
        self._completed = True
        if not current.keep_alive:
            self.closed = True  # llhttp refuses what follows; we answer, then close

    # -- helpers -------------------------------------------------------------------------

    def _raise(self, error: errors.ServingError) -> t.NoReturn:
        self._error = error
        raise error

    def _route_target(self, current: Request, method: str) -> None:
        """Check the request target's form (RFC 9112 3.2) and split it into path and query."""
        target = current.target
        if target.translate(None, _TARGET_BYTES):
            self._raise(errors.BadRequest("the request target holds bytes other than "
                                          "printable ASCII"))
        if target[:1] == b"/":
            path, _, query = target.partition(b"?")
            current.path = path.partition(b"#")[0].decode("ascii")
            current.query = query.partition(b"#")[0].decode("ascii")
        elif target == b"*":
            if method != "OPTIONS":
                self._raise(errors.BadRequest("the target * is for OPTIONS only"))
            current.path = "*"
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            try:
                parts = urlsplit(target.decode("ascii"))
                parts.port  # noqa: B018 - a malformed port raises here
            except ValueError as exc:
                self._raise(errors.BadRequest(f"invalid absolute request target: {exc}"))
            if not parts.netloc:
                self._raise(errors.BadRequest("an absolute request target needs a host"))
            current.path = parts.path or "/"
            current.query = parts.query
        else:
            self._raise(errors.BadRequest("the request target must be a path (origin-form) "
                                          "or an http(s) URL (absolute-form)"))


def frame_response(version: str, method: str, status: str, headers: list[tuple[str, str]],
                   keep: bool, date: str) -> tuple[bytes, str, int, bool]:
    """The head of an answer and how its body is delimited (RFC 9112 6.3).

    Returns ``(head bytes, framing, length, keep)``: framing is ``none`` (HEAD, 1xx, 204,
    304: no body may follow), ``length`` (``length`` bytes, the app's Content-Length),
    ``chunked`` (HTTP/1.1 with no Content-Length: a streamed answer) or ``close``
    (HTTP/1.0 with no Content-Length: the body ends where the connection does), and
    whether the connection stays open after it.
    """
    code = int(status[:3])
    length = -1
    out = [f"{version} {status}"]
    has_date = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            if code == 204 or 100 <= code < 200:
                continue  # RFC 9110 8.6: never on 1xx and 204
            length = int(value)
        elif lower == "transfer-encoding" or lower == "connection":
            continue  # hop-by-hop: ours to decide (PEP 3333 forbids them from apps)
        elif lower == "date":
            has_date = True
        out.append(f"{name}: {value}")
    if not has_date:
        out.append(f"Date: {date}")
    if method == "HEAD" or code in _NO_BODY_STATUSES or 100 <= code < 200:
        framing = "none"
    elif length >= 0:
        framing = "length"
    elif version == "HTTP/1.1":
        framing = "chunked"
        out.append("Transfer-Encoding: chunked")
    else:
        framing, keep = "close", False
    if not keep:
        out.append("Connection: close")
    elif version == "HTTP/1.0":
        out.append("Connection: keep-alive")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1"), framing, length, keep
