"""Malformed, truncated and hostile requests: our JSON error, never a prediction or a 500."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.faults.conftest import NUMPY_LINEAR, raw_exchange, read_response


@pytest.fixture
def server(serve):
    return serve(NUMPY_LINEAR, "--workers", "1", "--threads", "4")


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def assert_json_error(status, headers, body, code, says):
    assert status == code, body
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["code"] == code and says in answer["message"], answer
    # Refused by the worker loop or answered by the app: the request's id, both places.
    assert answer["request_id"] and answer["request_id"] == headers["x-request-id"], answer


def test_truncated_body_is_400_never_a_prediction(server):
    # Content-Length 1000, 9 bytes of valid JSON, then the client half-closes.
    request = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n[[1,2,3]]")
    status, headers, body = raw_exchange(server.port, request, half_close=True)
    assert_json_error(status, headers, body, 400, "the body ended after 9 bytes, before the 1000")
    assert requests.post(server.url(), json=[[1, 2, 3]], timeout=5).status_code == 200


def test_truncated_chunked_body_is_400(server):
    request = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n9\r\n[[1,2,3]]\r\n")
    status, headers, body = raw_exchange(server.port, request, half_close=True)
    assert_json_error(status, headers, body, 400, "before its chunked end")


def test_oversized_header_is_431_json(server):
    status, headers, body = raw_exchange(
        server.port, post("/invocations", b"[[1,2,3]]", f"X-Big: {'a' * 20_000}\r\n"))
    assert_json_error(status, headers, body, 431, "header field is over 8190 bytes")
    assert headers["connection"] == "close"


def test_content_length_with_transfer_encoding_is_400_json(server):
    request = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n[[1,2,3]]\r\n0\r\n\r\n")
    status, headers, body = raw_exchange(server.port, request)
    assert_json_error(status, headers, body, 400,
                      "Transfer-Encoding can't be present with Content-Length")


@pytest.mark.parametrize("request_bytes, code, says", [
    (b"GARBAGE\r\n\r\n", 400, "invalid request line"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP version HTTP/2.0"),
    (b"GET /ping HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400, "Invalid header token"),
    (b"GET /ping HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400,
     "Unexpected whitespace after header value"),  # obs-fold
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400,
     "Invalid character in Content-Length"),
    # chunked not last: RFC 9112 6.3 says 400; a coding we do not decode before it: 501.
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
     "invalid `Transfer-Encoding`"),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
     "not supported"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request target is over"),
    (post("/invocations", b"1" * (7 << 20)), 413, "over the limit of 6291456 bytes"),
])
def test_malformed_requests_get_our_json(server, request_bytes, code, says):
    status, headers, body = raw_exchange(server.port, request_bytes)
    assert_json_error(status, headers, body, code, says)


def test_exception_text_stays_out_of_500_bodies(serve, faulty_model):
    server = serve(faulty_model, "--workers", "1")
    response = requests.post(server.url(), json={"open": "/opt/ml/model/secret-weights.bin"},
                             timeout=10)
    assert response.status_code == 500
    body = response.json()
    request_id = body.pop("request_id")
    assert request_id == response.headers["X-Request-Id"]
    assert body == {"code": 500, "type": "ModelError",
                    "message": "predict_fn raised FileNotFoundError",
                    "stage": "predict", "exception": "FileNotFoundError"}
    assert "secret" not in response.text
    # For the operator, on the line of that request: the text and the traceback.
    assert f"[{request_id}] serving.contract.pipeline: predict_fn raised" in server.log
    assert "secret-weights.bin" in server.log and "Traceback" in server.log


def test_user_code_calling_sys_exit_is_a_500_and_the_worker_serves_on(serve, faulty_model):
    server = serve(faulty_model, "--workers", "1", "--threads", "1")
    for _ in range(3):  # more than the worker has threads
        response = requests.post(server.url(), json={"exit": True}, timeout=10)
        assert response.status_code == 500 and response.json()["code"] == 500
    assert requests.post(server.url(), json=[1], timeout=10).json() == [2.0]


def test_accept_falls_back_when_the_preferred_type_cannot_encode(server):
    response = requests.post(server.url(), json=[[1, 2, 3]], timeout=5, headers={
        "Accept": "image/png;q=0.9, application/json;q=0.5"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.json()[0]) == 2
    refused = requests.post(server.url(), json=[[1, 2, 3]], timeout=5,
                            headers={"Accept": "image/png"})
    assert refused.status_code == 406 and refused.json()["supported"] == ["image/png"]


def test_chunked_pipelined_continue_and_http10_requests_are_served(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # A chunked body and a second request right behind it on the same connection.
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n4\r\n[[1,\r\n5\r\n2,3]]\r\n0\r\n\r\n"
                     + post("/invocations", b"[[1,2,3]]"))
        first, second = read_response(sock), read_response(sock)
        assert first[0] == second[0] == 200 and first[2] == second[2]
        # Expect: 100-continue gets its interim answer before the body is sent.
        sock.sendall(post("/invocations", b"", "Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", b"Content-Length: 9"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"[[1,2,3]]")
        assert read_response(sock)[2] == first[2]
    status, headers, _ = raw_exchange(server.port, b"GET /ping HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"
