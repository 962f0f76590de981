"""serving.hosts.gunicorn.http1: llhttp with our limits and RFC 9112 checks on top, and answer framing.

The parsing layer is tested without a server: what a client sends becomes complete
requests or one error that ends the connection, never an exception, whatever the bytes
and however they are split across reads (property tests with hypothesis). Answer framing
is read back with h11, an independent HTTP/1.1 implementation.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import errors
from serving.hosts.gunicorn.http1 import (
    MAX_HEAD_BYTES,
    MAX_PIPELINED,
    Request,
    RequestReader,
    frame_response,
)

LIMIT = 1 << 20
#: Every status the reader answers with.
STATUSES = {400, 413, 414, 417, 431, 501, 505}


def parse(data: bytes, *, splits: list[int] | None = None, eof: bool = False,
          max_body: int = LIMIT) -> list[Request | errors.ServingError]:
    reader = RequestReader(max_body)
    cuts = sorted(set(splits or [])) + [len(data)]
    start = 0
    for cut in cuts:
        if cut > start:
            reader.feed(data[start:cut], 0.0)
            start = cut
    if eof:
        reader.end_of_input()
    return list(reader.ready)


def refusal(data: bytes, **kwargs) -> errors.ServingError:
    items = parse(data, **kwargs)
    assert items and isinstance(items[-1], errors.ServingError), items
    return items[-1]


H = b"POST /invocations HTTP/1.1\r\nHost: a\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"

#: The smuggling and conformance shapes of issue 20, each with its status and message.
REFUSED = {
    "5000-digit Content-Length": (H + b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n", 400,
                                  "Content-Length overflow"),
    "non-ASCII digit": (H + "Content-Length: \u0665\r\n\r\n".encode(), 400, "Content-Length"),
    "+ Content-Length": (H + b"Content-Length: +5\r\n\r\nhello", 400, "Content-Length"),
    "- Content-Length": (H + b"Content-Length: -5\r\n\r\nhello", 400, "Content-Length"),
    "hex Content-Length": (H + b"Content-Length: 0x5\r\n\r\nhello", 400, "Content-Length"),
    "underscore Content-Length": (H + b"Content-Length: 5_0\r\n\r\nhello", 400, "Content-Length"),
    "list Content-Length": (H + b"Content-Length: 5, 5\r\n\r\nhello", 400, "Content-Length"),
    "two Content-Length": (H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400,
                           "Duplicate Content-Length"),
    "CL and TE": (H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                  "Content-Length"),
    "TE with VT": (H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400, "header value"),
    "TE with NBSP": (H + b"Transfer-Encoding: \xa0chunked\r\n\r\n0\r\n\r\n", 400,
                     "Transfer-Encoding"),
    "stacked chunked": (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400,
                        "Transfer-Encoding"),
    "two TE chunked": (H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
                       "Transfer-Encoding"),
    "chunked not last": (H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400,
                         "Transfer-Encoding"),
    "gzip alone": (H + b"Transfer-Encoding: gzip\r\n\r\n", 400, "Transfer-Encoding"),
    "gzip then chunked": (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
                          "not supported"),
    "chunked in HTTP/1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                            400, "not allowed in HTTP/1.0"),
    "obs-fold": (H + b"X: a\r\n b\r\n\r\n", 400, "whitespace"),
    "space before colon": (H + b"X : a\r\n\r\n", 400, "header token"),
    "bare CR in chunk extension": (CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400, "chunk"),
    "bare LF in chunk extension": (CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400, "chunk"),
    "space after chunk size": (CHUNKED + b"5\r\nhello\r\n0 \r\n\r\n", 400, "chunk size"),
    "space before chunk size": (CHUNKED + b"5\r\nhello\r\n 0\r\n\r\n", 400, "chunk size"),
    "empty chunk extension": (CHUNKED + b"5;\r\nhello\r\n0\r\n\r\n", 400, "chunk extensions"),
    "bare LF after chunk size": (CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400, "chunk size"),
    "chunk data without CRLF": (CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400, "chunk data"),
    "bare LF after chunk data": (CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400, "chunk data"),
    "huge chunk size": (CHUNKED + b"f" * 40 + b"\r\n", 400, "overflow"),
    "Host trailer": (CHUNKED + b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n", 400, "trailer field host"),
    "Content-Type trailer": (CHUNKED + b"0\r\nContent-Type: text/csv\r\n\r\n", 400,
                             "trailer field content-type"),
    "Content-Length trailer": (CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n", 400,
                               "Content-Length"),
    "no Host in HTTP/1.1": (b"GET /ping HTTP/1.1\r\n\r\n", 400, "exactly one Host"),
    "two Host fields": (b"GET /ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "one Host"),
    "two Host in HTTP/1.0": (b"GET /ping HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "one Host"),
    "two Content-Type": (H + b"Content-Type: a/b\r\nContent-Type: c/d\r\n\r\n", 400,
                         "one Content-Type"),
    "ESC in target": (b"GET /a\x1bb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    "NUL in target": (b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    "CR in target": (b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    "bad IPv6 authority": (b"GET http://[/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute"),
    "bad port": (b"GET http://a:99999/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute"),
    "no host in absolute": (b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "needs a host"),
    "other scheme": (b"GET s://]ufd/: HTTP/1.1\r\nHost: a\r\n\r\n", 400, "must be a path"),
    "* outside OPTIONS": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "OPTIONS only"),
    "authority-form": (b"GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    "relative target": (b"GET foo/bar HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501,
                "CONNECT"),
    "HTTP/0.9": (b"GET /\r\n\r\n", 400, "HTTP/0.9"),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400, "version"),
    "LF-only head": (b"GET / HTTP/1.1\nHost: a\n\n", 400, "CRLF"),
    "control byte in value": (H + b"X: a\x01b\r\n\r\n", 400, "header value"),
    "unknown method": (b"-BLARGH / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method"),
    "lower-case method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method"),
    "Expect other": (H + b"Expect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417, "Expect"),
    "long target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
                    "target is over 8190"),
    "long field": (H + b"X: " + b"a" * 9000 + b"\r\n\r\n", 431, "field is over 8190"),
    "101 fields": (H + b"X: a\r\n" * 100 + b"\r\n", 431, "more than 100"),
    "body over the limit": (H + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1), 413,
                            f"{LIMIT + 1} bytes is over the limit"),
    "chunked over the limit": (CHUNKED + b"%x\r\n" % (LIMIT + 1) + b"a" * (LIMIT + 1), 413,
                               "over the limit"),
}


@pytest.mark.parametrize("data, status, says", REFUSED.values(), ids=REFUSED.keys())
def test_each_smuggling_and_conformance_shape_is_refused(data, status, says):
    error = refusal(data)
    assert error.status_code == status and says in error.message, error.message
    # Split into single bytes, the same answer: nothing depends on how reads cut it.
    again = refusal(data, splits=list(range(1, len(data)))) if len(data) < 3000 else error
    assert (again.status_code, again.message) == (error.status_code, error.message)


def test_a_request_and_what_the_environ_needs():
    (request,) = parse(b"\r\nPOST http://h:8080/invocations?x=1 HTTP/1.1\r\nHost: h\r\n"
                       b"X-Value: caf\xc3\xa9 \t\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n"
                       b"3;name=\"v\"\r\n[1]\r\n0\r\nX-T: 1\r\n\r\n")
    assert (request.method, request.path, request.query, request.version) == \
        ("POST", "/invocations", "x=1", "HTTP/1.1")
    assert request.body == b"[1]" and request.chunked and request.keep_alive
    # Trailing whitespace is not part of a value; obs-text is latin-1; trailers are dropped.
    assert request.header("x-value") == ["caf\xc3\xa9"]
    assert request.header("x-t") == []
    (options,) = parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert options.path == "*"
    (old,) = parse(b"GET /a%20b#frag HTTP/1.0\r\n\r\n")
    assert old.path == "/a%20b" and not old.keep_alive


def test_pipelined_requests_come_out_in_order_and_an_error_after_them():
    good = b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n"
    no_host = b"GET /x HTTP/1.1\r\n\r\n"
    items = parse(good + H + b"Content-Length: 3\r\n\r\nabc" + good + no_host + good)
    assert [type(i).__name__ for i in items] == ["Request", "Request", "Request", "BadRequest"]
    assert items[1].body == b"abc"


def test_a_request_that_closes_ends_the_parsing():
    reader = RequestReader(LIMIT)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n", 0.0)
    assert len(reader.ready) == 1 and not reader.ready[0].keep_alive and reader.closed
    reader.feed(b"garbage", 0.0)
    assert len(reader.ready) == 1


def test_an_upgrade_ends_http_and_keeps_the_bytes_after_its_head():
    reader = RequestReader(LIMIT)
    reader.feed(b"GET /ping HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"\r\n\x81\x05hello", 0.0)
    assert len(reader.ready) == 1 and isinstance(reader.ready[0], Request) and reader.closed
    # The worker decides what the upgrade becomes: it needs the flag, and the first bytes
    # of the new protocol (here a WebSocket text frame) that came in the same read.
    assert reader.ready[0].upgrade and reader.leftover == b"\x81\x05hello"
    plain = RequestReader(LIMIT)
    plain.feed(b"GET /ping HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", 0.0)
    assert not plain.ready[0].upgrade  # no Connection: upgrade, so no upgrade
    # llhttp takes no body after an Upgrade head: a request that declared one is refused,
    # never answered without its body.
    error = refusal(b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nContent-Length: 3\r\n\r\nabc")
    assert error.status_code == 400 and "upgrade with a body" in error.message


def test_no_more_than_max_pipelined_requests_wait():
    reader = RequestReader(LIMIT)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * (MAX_PIPELINED + 10), 0.0)
    assert len(reader.ready) == MAX_PIPELINED and reader.closed
    assert all(isinstance(item, Request) for item in reader.ready)


def test_a_head_sent_slowly_is_bounded_across_reads():
    reader = RequestReader(LIMIT)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ", 0.0)
    for _ in range(MAX_HEAD_BYTES // 4096 + 1):
        reader.feed(b"a" * 4096, 0.0)  # one field that never ends
    assert reader.closed and reader.ready[-1].status_code == 431


def test_chunk_framing_counts_against_the_limit():
    # A body of 1 KiB in one-byte chunks, each with a long extension: 1 KiB of content,
    # far more on the wire.
    chunk = b"1;" + b"e" * 4000 + b"\r\nx\r\n"
    error = refusal(CHUNKED + chunk * 300, max_body=1024)
    assert error.status_code == 413


def test_a_client_closing_mid_request_is_a_400():
    assert "before the request head ended" in refusal(b"GET / HTTP/1.1\r\nHo", eof=True).message
    assert "after 2 bytes, before the 9 bytes" in \
        refusal(H + b"Content-Length: 9\r\n\r\nab", eof=True).message
    assert "before its chunked end" in refusal(CHUNKED + b"0\r\n", eof=True).message
    assert parse(b"", eof=True) == []


# -- properties ------------------------------------------------------------------------

VALID = [
    b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n",
    H + b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n[[1,2,3]]",
    CHUNKED + b"4\r\n[[1,\r\n5;x=y\r\n2,3]]\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD http://a/ping?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
]


def outcome(items: list) -> list:
    return [(i.method, i.target, i.headers, bytes(i.body), i.keep_alive)
            if isinstance(i, Request) else (i.status_code, i.message) for i in items]


def assert_well_formed(items: list) -> None:
    for index, item in enumerate(items):
        if isinstance(item, errors.ServingError):
            assert index == len(items) - 1, "an error is the last thing on a connection"
            assert item.status_code in STATUSES, item
        else:
            assert isinstance(item, Request) and item.headers_done


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_arbitrary_bytes_never_raise(data, splits, eof):
    assert_well_formed(parse(data, splits=splits, eof=eof))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=6), st.data())
def test_how_reads_split_a_stream_changes_nothing(requests, draw):
    data = b"".join(requests)
    splits = draw.draw(st.lists(st.integers(0, len(data)), max_size=12))
    whole = parse(data)
    assert len([i for i in whole if isinstance(i, Request)]) >= 1
    assert outcome(parse(data, splits=splits)) == outcome(whole)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255),
                                                  st.sampled_from(["insert", "replace",
                                                                   "delete"])),
                                        min_size=1, max_size=4),
       st.lists(st.integers(0, 400), max_size=5))
def test_mutated_requests_never_raise_and_split_the_same(base, mutations, splits):
    data = bytearray(base + base)
    for position, byte, how in mutations:
        position %= len(data) + 1
        if how == "insert":
            data[position:position] = bytes([byte])
        elif how == "replace" and position < len(data):
            data[position] = byte
        elif position < len(data):
            del data[position]
    data = bytes(data)
    items = parse(data, splits=splits, eof=True)
    assert_well_formed(items)
    assert outcome(items) == outcome(parse(data, eof=True))


# -- framing answers, read back by h11 ------------------------------------------------

def read_back(method: str, version: str, head: bytes, body: bytes) -> tuple[h11.Response, bytes,
                                                                           bool]:
    """h11, as the client that sent ``method``, reads our answer; returns the response, the
    body it found, and whether it expects the connection to go on."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")],
                            http_version=version[5:]))
    client.send(h11.EndOfMessage())
    client.receive_data(head + body)
    response, data = None, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            data += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        elif event is h11.NEED_DATA:
            client.receive_data(b"")  # the close ends a close-delimited body
        else:
            raise AssertionError(event)
    return response, data, client.our_state is h11.DONE and client.their_state is h11.DONE


@pytest.mark.parametrize("method, version, status, headers, body, framing, keeps", [
    ("GET", "HTTP/1.1", "200 OK", [("Content-Length", "2")], b"ok", "length", True),
    ("GET", "HTTP/1.1", "200 OK", [], b"2\r\nok\r\n0\r\n\r\n", "chunked", True),
    ("HEAD", "HTTP/1.1", "200 OK", [("Content-Length", "2")], b"", "none", True),
    ("HEAD", "HTTP/1.1", "200 OK", [], b"", "none", True),
    ("GET", "HTTP/1.1", "204 No Content", [("Content-Length", "0")], b"", "none", True),
    ("GET", "HTTP/1.1", "304 Not Modified", [], b"", "none", True),
    ("GET", "HTTP/1.0", "200 OK", [("Content-Length", "2")], b"ok", "length", True),
    ("GET", "HTTP/1.0", "200 OK", [], b"ok", "close", False),
])
def test_answers_are_framed_as_rfc_9112_says(method, version, status, headers, body, framing,
                                            keeps):
    head, how, _, keep = frame_response(version, method, status,
                                        headers + [("Transfer-Encoding", "chunked")], True,
                                        "Tue, 01 Dec 2026 10:00:00 GMT")
    assert how == framing and keep is keeps
    if version == "HTTP/1.0":  # h11 speaks HTTP/1.1 only: read the 1.0 answer by hand
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == f"HTTP/1.0 {status}" and head.endswith(b"\r\n\r\n")
        assert "Transfer-Encoding: chunked" not in lines
        assert ("Connection: close" in lines) is (not keep)
        assert ("Content-Length: 2" in lines) is (how == "length")
        return
    response, data, _ = read_back(method, version, head, body)
    assert response.status_code == int(status[:3])
    names = {name for name, _ in response.headers}
    if how == "none":
        assert data == b"" and b"transfer-encoding" not in names
    if status.startswith("204"):
        assert b"content-length" not in names  # RFC 9110 8.6
    if how in ("length", "chunked", "close"):
        assert data == b"ok"
    assert [v for n, v in response.headers if n == b"transfer-encoding"] in ([], [b"chunked"])
    assert (b"close" in [v for n, v in response.headers if n == b"connection"]) is (not keep)
