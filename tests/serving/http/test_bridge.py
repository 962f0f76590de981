"""One WSGI bridge for every host: the same request, read by the gunicorn worker's parser
(llhttp) or handed over as an ASGI scope (as Ray Serve's proxy, uvicorn on h11, does),
reaches the app as the same environ and comes back as the same answer."""

from __future__ import annotations

import time
import types
from urllib.parse import unquote

import h11
import pytest

from handlers.content import default_registry
from serving.config import Config
from serving.contract.pipeline import Pipeline
from serving.hosts.gunicorn.http1 import RequestReader
from serving.hosts.gunicorn.worker import request_environ
from serving.hosts.ray import scope_environ
from serving.http.app import create_app
from serving.http.bridge import call_app

SERVER, CLIENT = ("127.0.0.1", 8080), ("127.0.0.1", 50123)


def head(first: str, *fields: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([first, "Host: 127.0.0.1:8080", "X-Request-Id: same-id", *fields])
            + "\r\n\r\n").encode("latin-1") + body


REQUESTS = {
    "json": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                 "Content-Length: 7", body=b"[1,2,3]"),
    "chunked": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                    body=b"3\r\n[4,\r\n3\r\n5,6\r\n1\r\n]\r\n0\r\n\r\n"),
    "csv, a query": head("POST /invocations?a=1&b=%20 HTTP/1.1", "Content-Type: text/csv",
                         "Accept: application/json", "Content-Length: 5", body=b"1,2,3"),
    # X_Amzn_SageMaker_Custom_Attributes would pass for the dashed name once dashes become
    # underscores: dropped by both, and the dashed one kept.
    "underscore field": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                             "X_Amzn_SageMaker_Custom_Attributes: forged",
                             "X-Amzn-SageMaker-Custom-Attributes: mine", "Content-Length: 3",
                             body=b"[1]"),
    "repeated Accept": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                            "Accept: text/html", "Accept: application/json;q=0.5",
                            "Content-Length: 3", body=b"[2]"),
    "406": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                "Accept: image/png", "Content-Length: 3", body=b"[2]"),
    "415": head("POST /invocations HTTP/1.1", "Content-Type: application/x-nothing",
                "Content-Length: 3", body=b"abc"),
    "400": head("POST /invocations HTTP/1.1", "Content-Type: application/json",
                "Content-Length: 4", body=b"[1,]"),
    "no body": head("POST /invocations HTTP/1.1", "Content-Type: application/json"),
    "ping, HTTP/1.0": head("GET /ping HTTP/1.0"),
    "execution parameters": head("GET /execution-parameters HTTP/1.1"),
    "percent-encoded path, 404": head("GET /no%20such/%C3%A9 HTTP/1.1"),
    "405": head("DELETE /invocations HTTP/1.1"),
    "openapi": head("GET /openapi.json HTTP/1.1"),
}


def worker_environ(raw: bytes, arrived: float) -> dict:
    reader = RequestReader(6 << 20)
    reader.feed(raw, arrived)
    request = reader.ready.popleft()
    assert not reader.failed
    request.arrived = arrived
    return request_environ(request, request.body, server=SERVER, port=str(SERVER[1]),
                           peer=CLIENT[0], addr=CLIENT)


def asgi_environ(raw: bytes, arrived: float) -> dict:
    """The scope and body as uvicorn's h11 protocol makes them, then the Ray host's environ."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(raw)
    event = connection.next_event()
    body = b""
    while not isinstance(part := connection.next_event(), h11.EndOfMessage):
        body += part.data
    raw_path, _, query = event.target.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "scheme": "http",
             "http_version": event.http_version.decode(), "method": event.method.decode(),
             "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path,
             "query_string": query, "headers": [(k.lower(), v) for k, v in event.headers],
             "server": SERVER, "client": CLIENT}
    return scope_environ(scope, body, port=SERVER[1], arrived=arrived)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    module = types.ModuleType("inference")
    module.__file__ = "inference.py"
    module.model_fn = lambda model_dir: 2
    module.predict_fn = lambda data, model: data * model
    config = Config.load(["--model-dir", str(model_dir)], {})
    pipeline = Pipeline.from_module(module, default_registry(), model_dir=str(model_dir),
                                    default_accept=config.default_accept)
    pipeline.load_model()
    pipeline.enter_worker(0, "cpu", 1)
    return create_app(config, pipeline)


#: What differs between the hosts by design: gunicorn forks workers, a replica does not;
#: each has a stderr and an input stream of its own (their bytes are compared).
HOST_KEYS = {"wsgi.multiprocess", "wsgi.input", "wsgi.errors"}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_both_hosts_build_the_same_environ(name):
    raw, now = REQUESTS[name], time.monotonic()
    ours, theirs = worker_environ(raw, now), asgi_environ(raw, now)
    assert {k: v for k, v in ours.items() if k not in HOST_KEYS} \
        == {k: v for k, v in theirs.items() if k not in HOST_KEYS}
    assert ours["wsgi.input"].read() == theirs["wsgi.input"].read()
    assert ours["wsgi.multiprocess"] is True and theirs["wsgi.multiprocess"] is False
    if name == "underscore field":
        assert ours["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] == "mine"
    if name == "repeated Accept":
        assert ours["HTTP_ACCEPT"] == "text/html,application/json;q=0.5"
    if name == "chunked":
        assert ours["CONTENT_LENGTH"] == "7" and "HTTP_TRANSFER_ENCODING" not in ours
    if name == "percent-encoded path, 404":
        assert ours["PATH_INFO"] == "/no such/\xc3\xa9"  # latin-1 text of the bytes (PEP 3333)


@pytest.mark.parametrize("name", list(REQUESTS))
def test_both_hosts_get_the_same_answer(app, name):
    raw, now = REQUESTS[name], time.monotonic()
    answers = [call_app(app, environ(raw, now)) for environ in (worker_environ, asgi_environ)]
    seen = [(a.status, a.headers, a.read()) for a in answers]
    assert seen[0] == seen[1]
    status, headers, body = seen[0]
    assert ("X-Request-Id", "same-id") in headers
    assert status.split()[0] == {"json": "200", "chunked": "200", "csv, a query": "200",
                                 "underscore field": "200", "repeated Accept": "200",
                                 "406": "406", "415": "415", "400": "400", "no body": "400",
                                 "ping, HTTP/1.0": "200", "execution parameters": "200",
                                 "percent-encoded path, 404": "404", "405": "405",
                                 "openapi": "200"}[name]
    if name in ("json", "chunked"):
        assert body == {"json": b"[2,4,6]", "chunked": b"[8,10,12]"}[name]


def test_an_answer_started_on_its_first_chunk():
    # PEP 3333 lets an app call start_response when its iterable first yields.
    closed = []

    def late(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        yield b"two"

    def app(environ, start_response):
        generator = late(environ, start_response)
        return Closing(generator, closed)

    answer = call_app(app, {})
    assert answer.status_code == 200 and answer.streamed
    assert list(answer) == [b"one", b"two"]
    answer.close()
    assert closed == [True]


def test_a_length_makes_a_whole_answer_and_a_restart_replaces_the_first():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        try:
            raise ValueError("while starting")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [("Content-Length", "3")],
                           sys.exc_info())
        return [b"bad"]

    answer = call_app(app, {})
    assert (answer.status_code, answer.content_length, answer.streamed) == (500, 3, False)
    assert answer.read() == b"bad"


def test_an_app_that_never_starts_is_a_bug():
    with pytest.raises(RuntimeError, match="start_response"):
        call_app(lambda environ, start_response: [], {})


class Closing:
    def __init__(self, iterable, closed):
        self._iterable, self._closed = iterable, closed

    def __iter__(self):
        return iter(self._iterable)

    def close(self):
        self._closed.append(True)
