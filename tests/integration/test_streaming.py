"""Streamed answers: a model whose predict_fn is a generator, read as it is produced over
plain HTTP (chunked) and through boto3's invoke_endpoint_with_response_stream."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from serving.protocols import eventstream
from tests.eventstream_reader import read_messages
from tests.examples.conftest import SDK_PYTHON
from tests.server_helpers import REPO, write_model_dir

BOTO3_CLIENT = REPO / "tests" / "clients" / "boto3_stream_client.py"

#: Words one at a time, ``delay`` seconds apart; objects, bytes, or a failure on request.
GENERATOR_MODEL = """
    import time

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        if data.get("fail") == "before":
            raise ValueError("no stream at all")
        return words(data, data.get("delay", 0.3))

    def words(data, delay):
        for index, word in enumerate(data["text"].split()):
            if index:
                time.sleep(delay)
            if index == data.get("fail_at"):
                raise RuntimeError("the model broke mid-stream")
            if data.get("as") == "objects":
                yield {"index": index, "word": word}
            else:
                yield word + " "
"""

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path, GENERATOR_MODEL)


def read_streamed(server, payload, path="/invocations", headers=None):
    """(chunks as they came with their arrival times, response) from a streaming read."""
    started = time.monotonic()
    response = requests.post(server.url(path), json=payload, stream=True, timeout=30,
                             headers=headers or {})
    chunks = []
    for chunk in response.raw.stream(amt=None, decode_content=False):
        chunks.append((chunk, time.monotonic() - started))
    return chunks, response


def test_words_arrive_as_they_are_made(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    chunks, response = read_streamed(server, {"text": TEXT})
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["X-Request-Id"]
    assert b"".join(c for c, _ in chunks).decode() == " ".join(TEXT.split()) + " "
    first_at, last_at = chunks[0][1], chunks[-1][1]
    # Nine words 0.3 s apart: the first leaves at once, the last 2.4 s later.
    assert len(chunks) >= 5
    assert first_at < 1.0 < 2.0 < last_at, (first_at, last_at)


def test_objects_stream_as_json_lines(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    response = requests.post(server.url(), json={"text": TEXT, "as": "objects", "delay": 0})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/jsonlines"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"index": i, "word": w} for i, w in enumerate(TEXT.split())]


def test_an_accept_that_refuses_the_stream_type_is_406(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    response = requests.post(server.url(), json={"text": TEXT},
                             headers={"Accept": "application/x-npy"})
    assert response.status_code == 406, response.text
    assert response.json()["supported"] == ["text/plain"]


def test_the_deadline_is_per_chunk_not_per_stream(serve, model_dir):
    server = serve(model_dir, "--workers", "1", "--request-timeout", "1")
    # Eight gaps of 0.4 s: 3.2 s in all, far past the 1 s deadline, and each gap within it.
    chunks, response = read_streamed(server, {"text": TEXT, "delay": 0.4})
    assert response.status_code == 200
    assert b"".join(c for c, _ in chunks).decode().split() == TEXT.split()
    assert chunks[-1][1] > 3.0
    # One gap of 2 s: the stream breaks off there, and the client can tell.
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        response = requests.post(server.url(), json={"text": "a b c", "delay": 2}, timeout=30)
    assert "broke off after 1 chunk(s)" in server.log
    assert requests.get(server.url("/ping")).status_code == 200


def test_a_failure_mid_stream_cuts_it_short_and_nothing_else(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    response = requests.post(server.url(), json={"text": TEXT, "fail_at": 3, "delay": 0},
                             stream=True, timeout=30)
    assert response.status_code == 200  # the status line left with the first word
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(chunk_size=None):
            received += chunk
    assert received == b"the quick brown "
    assert "RuntimeError: the model broke mid-stream" in server.log
    # A failure before the first word is an ordinary 500, and the server goes on.
    before = requests.post(server.url(), json={"text": TEXT, "fail": "before"})
    assert before.status_code == 500 and before.json()["stage"] == "predict"
    after = requests.post(server.url(), json={"text": "still here", "delay": 0})
    assert after.status_code == 200 and after.text == "still here "


def test_event_stream_framing_over_plain_http(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    response = requests.post(server.url("/endpoints/e/invocations-response-stream"),
                             json={"text": TEXT, "delay": 0, "fail_at": 2})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == eventstream.CONTENT_TYPE
    assert response.headers["X-Amzn-SageMaker-Content-Type"].startswith("text/plain")
    messages = read_messages(response.content)
    assert [h[":event-type"] for h, _ in messages[:-1]] == ["PayloadPart", "PayloadPart"]
    assert b"".join(p for _, p in messages[:-1]) == b"the quick "
    headers, payload = messages[-1]
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "ModelStreamError"
    assert json.loads(payload)["ErrorCode"] == "ModelError"


def boto3_stream(server, body, content_type="application/json", target_model=None):
    """boto3's invoke_endpoint_with_response_stream, then invoke_endpoint, from the SDK's
    environment (see tests/clients/boto3_stream_client.py)."""
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: run `make install`"
    result = subprocess.run([str(SDK_PYTHON), str(BOTO3_CLIENT), server.url(""), content_type,
                             json.dumps(body), *([target_model] if target_model else [])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_boto3_invoke_endpoint_with_response_stream(serve, model_dir):
    server = serve(model_dir, "--workers", "1")
    got = boto3_stream(server, {"text": TEXT})
    assert got["error"] is None
    assert len(got["parts"]) == len(TEXT.split())
    assert "".join(got["parts"]) == got["plain"]  # the same answer, streamed or whole
    assert got["first_at"] < 1.0 < 2.0 < got["last_at"]
    assert got["content_type"].startswith("text/plain")
    # A failure mid-stream reaches boto3 as the ModelStreamError event.
    broken = boto3_stream(server, {"text": TEXT, "delay": 0, "fail_at": 4})
    assert broken["parts"] == ["the ", "quick ", "brown ", "fox "]
    assert broken["error"]["code"] == "ModelStreamError"


def test_boto3_stream_of_a_model_that_does_not_stream(serve):
    server = serve(REPO / "examples" / "numpy-linear" / "model", "--workers", "1")
    got = boto3_stream(server, [[1, 2, 3]])
    assert got["error"] is None
    assert len(got["parts"]) == 1 and got["parts"][0] == got["plain"]
    assert got["content_type"] == got["plain_content_type"] == "application/json"
