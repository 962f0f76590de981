"""examples/word-language-model: the notebook's JSON request through the SDK and curl."""

from __future__ import annotations

import pytest
import requests

from tests.examples.conftest import sdk, served_example

pytestmark = pytest.mark.pytorch

REQUEST = {"seed": 111, "temperature": 2.0, "words": 100}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_example("word-language-model", tmp_path_factory, "--workers", "2") as server:
        yield server


def test_sdk_json_predictor_gets_text_of_the_asked_length(server):
    text = sdk(server, "json_payload", REQUEST)["result"]
    assert isinstance(text, str) and len(text.split()) == 100


def test_same_seed_and_temperature_give_the_same_text(server):
    first = requests.post(server.url(), json=REQUEST).json()
    # New connections: the answers may come from either worker.
    again = [requests.post(server.url(), json=REQUEST, headers={"Connection": "close"}).json()
             for _ in range(6)]
    assert all(text == first for text in again)
    other = requests.post(server.url(), json={**REQUEST, "seed": 112}).json()
    assert other != first
    assert sdk(server, "json_payload", REQUEST)["result"] == first


def test_curl_style_requests(server):
    response = requests.post(server.url(), data='{"seed": 1, "temperature": 0.5, "words": 5}',
                             headers={"Content-Type": "application/json", "Accept": "text/plain"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/plain"
    assert len(response.text.split()) == 5


@pytest.mark.parametrize("body, status", [
    ({"seed": 1, "temperature": 0, "words": 5}, 400),
    ({"seed": 1, "words": 100000}, 400),
    ({"seed": "x"}, 400),
    ([1, 2], 400),
])
def test_bad_requests_are_4xx(server, body, status):
    response = requests.post(server.url(), json=body)
    assert response.status_code == status and response.json()["code"] == status


def test_word_by_word_stream_is_the_same_text(server):
    """The streamed variant: words arrive as they are made, and join to the answer the
    same request gets whole; boto3's event stream reads the same words."""
    from tests.integration.test_streaming import boto3_stream

    whole = requests.post(server.url(), json=REQUEST, headers={"Accept": "text/plain"}).text
    response = requests.post(server.url(), json={**REQUEST, "stream": True}, stream=True)
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"] == "text/plain"
    chunks = [c for c in response.raw.stream(amt=None, decode_content=False)]
    assert len(chunks) > 1 and b"".join(chunks).decode() == whole
    got = boto3_stream(server, {**REQUEST, "stream": True})
    assert got["error"] is None and len(got["parts"]) == 100
    assert "".join(got["parts"]) == whole == got["plain"]
    bad = requests.post(server.url(), json={**REQUEST, "stream": "yes"})
    assert bad.status_code == 400


def test_bidirectional_stream_speaks_word_by_word_and_keeps_its_state(server):
    """stream_fn over a WebSocket, as SageMaker's sidecar opens it: one text frame a word,
    the same words the same request gets over /invocations; "continue" goes on from the
    stream's own LSTM state, so it differs from starting afresh; a bad request closes
    the stream with 1008 and the reason."""
    import json

    import websocket

    from tests.integration.test_bidirectional_stream import connect, receive_close

    whole = requests.post(server.url(), json={**REQUEST, "words": 20},
                          headers={"Accept": "text/plain"}).text
    ws = connect(server)
    try:
        def ask(request: dict) -> list[str]:
            ws.send(json.dumps(request))
            words = []
            while True:
                opcode, data = ws.recv_data()
                assert opcode == websocket.ABNF.OPCODE_TEXT
                text = data.decode()
                if text.startswith("{"):
                    assert json.loads(text) == {"done": True, "words": len(words)}
                    return words
                words.append(text)

        first = ask({**REQUEST, "words": 20})
        assert " ".join(first) == whole
        continued = ask({**REQUEST, "words": 20, "continue": True})
        afresh = ask({**REQUEST, "words": 20})
        assert afresh == first and continued != first and len(continued) == 20
        ws.send(json.dumps({**REQUEST, "temperature": 0}))
        code, reason, _ = receive_close(ws)
        assert code == 1008 and "temperature" in reason
    finally:
        ws.close()
