"""Answers as the worker writes them, read back with h11 (an independent parser)."""

from __future__ import annotations

import h11
import orjson
import pytest

from serving import errors
from serving.hosts.gunicorn.http1 import RequestReader
from serving.hosts.gunicorn.responses import error_response, write_answer
from serving.http.bridge import call_app


def request(method: str = "POST", version: str = "1.1"):
    reader = RequestReader(1 << 20)
    reader.feed(f"{method} /invocations HTTP/{version}\r\nHost: x\r\n"
                f"Content-Length: 0\r\n\r\n".encode(), 0.0)
    return reader.ready.popleft()


def answer_of(status, headers, chunks):
    def app(environ, start_response):
        start_response(status, headers)
        return iter(chunks)

    return call_app(app, {})


def written(answer, req, keep=True):
    out: list[bytes] = []
    keep = write_answer(answer, req, keep, out.append)
    return b"".join(out), keep, len(out)


def parse(data: bytes, method: str = "POST"):
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/invocations", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            break
    return response, body, event


def test_a_whole_answer_goes_out_in_one_write_and_keeps_the_connection():
    data, keep, writes = written(answer_of("200 OK", [("Content-Length", "5")], [b"hello"]),
                                 request())
    response, body, end = parse(data)
    assert (response.status_code, body, keep, writes) == (200, b"hello", True, 1)
    assert isinstance(end, h11.EndOfMessage)


def test_a_streamed_answer_is_chunked_on_http_1_1():
    data, keep, _ = written(answer_of("200 OK", [("Content-Type", "text/plain")],
                                      [b"one", b"", b"two"]), request())
    response, body, end = parse(data)
    assert dict(response.headers)[b"transfer-encoding"] == b"chunked"
    assert body == b"onetwo" and keep and isinstance(end, h11.EndOfMessage)


def test_a_streamed_answer_on_http_1_0_ends_with_the_connection():
    data, keep, _ = written(answer_of("200 OK", [], [b"one", b"two"]), request(version="1.0"))
    assert not keep and data.endswith(b"onetwo") and b"chunked" not in data


def test_head_gets_the_head_only():
    data, keep, _ = written(answer_of("200 OK", [("Content-Length", "5")], [b"hello"]),
                            request("HEAD"))
    response, body, _ = parse(data, "HEAD")
    assert response.status_code == 200 and body == b"" and data.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("chunks", [[b"hello", b" world"], [b"hel"]],
                         ids=["longer", "shorter"])
def test_an_answer_not_its_declared_length_closes_the_connection(chunks):
    data, keep, _ = written(answer_of("200 OK", [("Content-Length", "5")], chunks), request())
    assert not keep
    assert data.endswith(b"hello") if chunks[0] == b"hello" else data.endswith(b"hel")


def test_an_error_answer_is_our_json_with_the_request_id():
    data = error_response(errors.RequestTimeout("too slow"), close=True, request_id="id-1")
    response, body, _ = parse(data)
    headers = dict(response.headers)
    assert response.status_code == 408 and headers[b"connection"] == b"close"
    assert headers[b"x-request-id"] == b"id-1"
    assert orjson.loads(body)["request_id"] == "id-1"
    assert orjson.loads(body)["message"] == "too slow"
