"""Bidirectional streaming: a real ``serve`` with 2 workers, and a real WebSocket client
(websocket-client) playing SageMaker's sidecar; where the test must misbehave on purpose
(never answer a ping, send a bad handshake) it speaks through wsproto over a raw socket."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import socket
import struct
import time

import pytest
import requests
import websocket
import wsproto
import wsproto.events as ws_events

from tests.server_helpers import Server, wait_for, write_model_dir

STREAM_PATH = "/invocations-bidirectional-stream"

#: A stream_fn that answers commands: echo text and binary, report its context, speak a
#: sentence token by token, keep a count across messages, or fail.
STREAM_MODEL = """
    import json
    import os
    import time

    def model_fn(model_dir):
        return {"greeting": "hello"}

    def predict_fn(data, model):  # /invocations, beside the streams
        return {"invoked": data, "greeting": model["greeting"]}

    def broken_parts():
        yield "one "
        raise RuntimeError("secret detail of the failure")

    def stream_fn(messages, model, context):
        count = 0
        for message in messages:
            count += 1
            if isinstance(message, bytes):
                yield bytes(reversed(message))
                continue
            command = json.loads(message)
            op = command.get("op")
            if op == "echo":
                yield {"echo": command, "count": count, "length": len(message)}
            elif op == "context":
                yield {"path": context.path, "query": context.query,
                       "variant": context.target_variant, "pid": os.getpid(),
                       "test_header": context.headers.get("X-Test")}
            elif op == "tokens":
                for token in command["text"].split():
                    yield token
                yield {"done": True}
            elif op == "fragments":
                yield iter(["one ", "two ", "three"])
            elif op == "broken fragments":
                yield broken_parts()
            elif op == "fail":
                raise RuntimeError("secret detail of the failure")
            elif op == "bye":
                yield "bye"
                return
            elif op == "talk":  # never reads again: only a limit can end it
                while True:
                    yield "more"
                    time.sleep(0.01)
"""

#: No stream_fn: each message goes through the default pipeline, one answer each.
PLAIN_MODEL = """
    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        if data.get("fail"):
            raise ValueError("secret")
        if data.get("stream"):  # a streamed answer: one message in fragments
            return (f"{v} " for v in data["values"])
        return {"sum": sum(data["values"])}
"""


def ws_url(server: Server, path: str = STREAM_PATH) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def connect(server: Server, path: str = STREAM_PATH, headers=None,
            timeout: float = 10) -> websocket.WebSocket:
    return websocket.create_connection(ws_url(server, path), timeout=timeout,
                                       header=[f"{k}: {v}" for k, v in (headers or {}).items()])


def receive_close(ws: websocket.WebSocket, timeout: float = 10) -> tuple[int, str, list]:
    """Read until the server's Close frame: (code, reason, the data messages before it)."""
    ws.settimeout(timeout)
    before = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            return code, data[2:].decode("utf-8"), before
        if opcode == websocket.ABNF.OPCODE_TEXT:
            before.append(data.decode("utf-8"))
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            before.append(data)


class RawClient:
    """A WebSocket client over a raw socket, through wsproto: it answers nothing by itself."""

    def __init__(self, server: Server, path: str = STREAM_PATH, headers=None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(ws_events.Request(host="127.0.0.1", target=path,
                                                          extra_headers=extra)))
        self.events: list = []

    def read(self, until, timeout: float = 10) -> list:
        """Events until ``until(event)`` is true for one (or the server closes)."""
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                self.events.append(event)
                if until(event):
                    return self.events
            if not data:
                return self.events

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidi")
    model_dir = write_model_dir(root, STREAM_MODEL)
    server = Server(model_dir, "--workers", "2", "--stream-ping-interval", "0.2",
                    "--stream-max-message-mb", str(64 / 1024), log_path=root / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def test_text_and_binary_messages_keep_their_frame_types(server):
    ws = connect(server)
    try:
        ws.send(json.dumps({"op": "echo", "n": 1}))
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT
        assert json.loads(data) == {"echo": {"op": "echo", "n": 1}, "count": 1, "length": 22}
        ws.send_binary(b"\x00\x01\x02\xff")
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY and data == b"\xff\x02\x01\x00"
        # Token by token: one text frame per token, in order, then the end marker.
        ws.send(json.dumps({"op": "tokens", "text": "the quick brown fox"}))
        got = [ws.recv() for _ in range(5)]
        assert got[:4] == ["the", "quick", "brown", "fox"]
        assert json.loads(got[4]) == {"done": True}
        # The state of a stream lives across its messages.
        ws.send(json.dumps({"op": "echo"}))
        assert json.loads(ws.recv())["count"] == 4
    finally:
        ws.close()


def test_a_message_fragmented_into_five_parts_arrives_as_one(server):
    ws = connect(server)
    try:
        text = json.dumps({"op": "echo", "pad": "x" * 40})
        parts = [text[i * 10:(i + 1) * 10] for i in range(4)] + [text[40:]]
        assert len(parts) == 5 and "".join(parts) == text
        ws.send_frame(websocket.ABNF.create_frame(parts[0], websocket.ABNF.OPCODE_TEXT, fin=0))
        for part in parts[1:-1]:
            ws.send_frame(websocket.ABNF.create_frame(part, websocket.ABNF.OPCODE_CONT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame(parts[-1], websocket.ABNF.OPCODE_CONT, fin=1))
        answer = json.loads(ws.recv())
        assert answer["count"] == 1 and answer["length"] == len(text)
        # Binary too: five parts, one message, reversed whole.
        payload = bytes(range(50))
        ws.send_frame(websocket.ABNF.create_frame(payload[:10], websocket.ABNF.OPCODE_BINARY,
                                                  fin=0))
        for i in range(1, 4):
            ws.send_frame(websocket.ABNF.create_frame(payload[i * 10:(i + 1) * 10],
                                                      websocket.ABNF.OPCODE_CONT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame(payload[40:], websocket.ABNF.OPCODE_CONT, fin=1))
        assert ws.recv() == payload[::-1]
    finally:
        ws.close()


def test_an_answer_sent_in_fragments_is_one_message_to_the_client(server):
    raw = RawClient(server)
    try:
        raw.read(lambda e: isinstance(e, ws_events.AcceptConnection))
        raw.send(ws_events.TextMessage(json.dumps({"op": "fragments"})))
        events = raw.read(lambda e: isinstance(e, ws_events.TextMessage) and e.message_finished)
        parts = [e for e in events if isinstance(e, ws_events.TextMessage)]
        # Each part leaves as it is made (a PARTIAL PayloadPart for SageMaker's client),
        # and an empty last frame ends the message (COMPLETE): the server cannot know a
        # part is the last until the iterator ends.
        assert [p.data for p in parts] == ["one ", "two ", "three", ""]
        assert [p.message_finished for p in parts] == [False, False, False, True]
    finally:
        raw.close()


def test_the_path_override_and_query_reach_the_model(server):
    headers = {"X-Amzn-SageMaker-Model-Invocation-Path": "models/v2/talk",
               "X-Amzn-SageMaker-Model-Query-String": "lang=en&voice=b",
               "X-Amzn-SageMaker-Target-Variant": "blue", "X-Test": "seen"}
    ws = connect(server, "/models/v2/talk?lang=en&voice=b", headers=headers)
    try:
        ws.send(json.dumps({"op": "context"}))
        seen = json.loads(ws.recv())
        assert seen["path"] == "/models/v2/talk"
        assert seen["query"] == "lang=en&voice=b"
        assert seen["variant"] == "blue" and seen["test_header"] == "seen"
    finally:
        ws.close()
    # The same path without the headers (SageMaker does not say its sidecar passes them
    # on): still the stream, its query the URL's.
    ws = connect(server, "/models/v2/talk?lang=fr", headers={"X-Test": "bare"})
    try:
        ws.send(json.dumps({"op": "context"}))
        seen = json.loads(ws.recv())
        assert seen["path"] == "/models/v2/talk" and seen["query"] == "lang=fr"
    finally:
        ws.close()
    # A header that names another path than the one connected to: no stream there.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, "/models/v2/other",
                headers={"X-Amzn-SageMaker-Model-Invocation-Path": "models/v2/talk"})
    assert refused.value.status_code == 404
    # An override that fails SageMaker's pattern is refused, with our JSON body.
    sock = handshake_socket(server, "/a//b", {"X-Amzn-SageMaker-Model-Invocation-Path": "a//b"})
    status, _, body = read_http_answer(sock)
    assert status == 400 and "X-Amzn-SageMaker-Model-Invocation-Path" in body["message"]


def test_server_pings_are_sent_and_client_pings_answered(server):
    ws = connect(server)
    try:
        ws.ping(b"are you there")
        pings, pong = 0, None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (pings < 3 or pong is None):
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_PING:
                pings += 1  # websocket-client answers each with a pong
            elif opcode == websocket.ABNF.OPCODE_PONG:
                pong = data
        assert pong == b"are you there"
        assert pings >= 3  # every 0.2 s
        # Answered pings keep the stream open, well past five intervals (the client
        # answers them while it reads).
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            opcode, _ = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_PING
        ws.send(json.dumps({"op": "echo"}))
        assert json.loads(ws.recv())["count"] == 1
    finally:
        ws.close()


def test_five_unanswered_pings_close_the_stream(server):
    raw = RawClient(server)
    try:
        started = time.monotonic()
        events = raw.read(lambda e: isinstance(e, ws_events.CloseConnection), timeout=10)
        elapsed = time.monotonic() - started
        pings = [e for e in events if isinstance(e, ws_events.Ping)]
        close = events[-1]
        assert isinstance(close, ws_events.CloseConnection)
        assert close.code == 1008 and "ping" in close.reason
        assert len(pings) == 5
        assert 0.8 < elapsed < 5, elapsed
    finally:
        raw.close()


@pytest.mark.parametrize("frame, code", [
    # A masked text frame whose payload is not UTF-8: wsproto's check, 1007.
    (b"\x81\x82\x00\x00\x00\x00\xc3\x28", 1007),
    # An unmasked frame from a client (RFC 6455 5.1 forbids it): a protocol error, 1002.
    (b"\x81\x02hi", 1002),
])
def test_frames_that_break_the_protocol_close_with_its_code(server, frame, code):
    raw = RawClient(server)
    try:
        raw.read(lambda e: isinstance(e, ws_events.AcceptConnection))
        raw.sock.sendall(frame)
        events = raw.read(lambda e: isinstance(e, ws_events.CloseConnection))
        assert isinstance(events[-1], ws_events.CloseConnection) and events[-1].code == code
    finally:
        raw.close()
    assert requests.get(server.url("/ping"), timeout=5).status_code == 200


def test_a_model_error_mid_stream_closes_with_1011_and_nothing_else_breaks(server):
    ws = connect(server)
    try:
        ws.send(json.dumps({"op": "echo"}))
        assert json.loads(ws.recv())["count"] == 1
        ws.send(json.dumps({"op": "fail"}))
        code, reason, _ = receive_close(ws)
        assert code == 1011
        assert "stream_fn" in reason and "RuntimeError" in reason
        assert "secret" not in reason
    finally:
        ws.close()
    assert "secret detail of the failure" in server.log  # the traceback is logged
    assert requests.get(server.url("/ping"), timeout=5).status_code == 200
    # /metrics counts the stream by how it closed, and its messages.
    def counted() -> bool:
        text = requests.get(server.url("/metrics"), timeout=5).text
        return ('serving_streams_closed_total{code="1011"}' in text
                and 'serving_stream_messages_total{direction="in"}' in text)
    wait_for(counted, 5, "the failed stream in /metrics")
    ws = connect(server)
    try:
        ws.send(json.dumps({"op": "echo"}))
        assert json.loads(ws.recv())["count"] == 1
    finally:
        ws.close()


def test_a_failure_inside_a_fragmented_answer_closes_with_1011(server):
    ws = connect(server)
    try:
        ws.send(json.dumps({"op": "broken fragments"}))
        code, reason, _ = receive_close(ws)
        assert code == 1011 and reason == "stream_fn raised RuntimeError"
    finally:
        ws.close()


def test_a_model_that_ends_the_stream_closes_it_normally(server):
    ws = connect(server)
    try:
        ws.send(json.dumps({"op": "bye"}))
        code, _, before = receive_close(ws)
        assert before == ["bye"] and code == 1000
    finally:
        ws.close()


def test_an_oversized_message_closes_with_1009(server):
    ws = connect(server)
    try:
        ws.send_binary(b"x" * (64 * 1024 + 1))
        code, reason, _ = receive_close(ws)
        assert code == 1009 and "65536" in reason
    finally:
        ws.close()
    # Fragments count together: five parts of 16 KiB are over 64 KiB as one message.
    ws = connect(server)
    try:
        part = b"y" * (16 * 1024)
        ws.send_frame(websocket.ABNF.create_frame(part, websocket.ABNF.OPCODE_BINARY, fin=0))
        for _ in range(4):
            ws.send_frame(websocket.ABNF.create_frame(part, websocket.ABNF.OPCODE_CONT, fin=0))
        code, _, _ = receive_close(ws)
        assert code == 1009
    finally:
        ws.close()


def test_64_concurrent_streams_while_invocations_and_ping_answer(server):
    def one_stream(index: int) -> list[int]:
        ws = connect(server, timeout=30)
        try:
            counts = []
            for n in range(5):
                ws.send(json.dumps({"op": "echo", "stream": index, "n": n}))
                answer = json.loads(ws.recv())
                assert answer["echo"]["stream"] == index
                counts.append(answer["count"])
                time.sleep(0.05)
            return counts
        finally:
            ws.close()

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(one_stream, i) for i in range(64)]
        # While they run, ordinary requests are answered at once.
        pings = [requests.get(server.url("/ping"), timeout=5).status_code for _ in range(20)]
        plain = requests.post(server.url("/invocations"), json={"op": "x"}, timeout=5)
        results = [f.result(timeout=60) for f in futures]
    assert results == [[1, 2, 3, 4, 5]] * 64
    assert pings == [200] * 20
    assert plain.status_code == 200
    assert plain.json() == {"invoked": {"op": "x"}, "greeting": "hello"}


def handshake_socket(server: Server, path: str, headers: dict[str, str] | None = None,
                     key: str | None = None, version: str = "13",
                     upgrade: bool = True) -> socket.socket:
    """A socket that has sent an upgrade request written by hand (to get it wrong)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode() if key is None else key
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  f"Sec-WebSocket-Version: {version}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_http_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("Content-Length", 0))
    while len(body) < length:
        body += sock.recv(65536)
    sock.close()
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def test_a_bad_handshake_gets_a_4xx_with_our_json(server):
    status, _, body = read_http_answer(handshake_socket(server, STREAM_PATH, key="short"))
    assert status == 400 and "Sec-WebSocket-Key" in body["message"]
    status, headers, body = read_http_answer(handshake_socket(server, STREAM_PATH, version="8"))
    assert status == 426 and headers["Sec-WebSocket-Version"] == "13"
    assert "version" in body["message"].lower()
    # A plain GET (no upgrade) on the stream path is told to upgrade.
    status, headers, body = read_http_answer(handshake_socket(server, STREAM_PATH,
                                                              upgrade=False))
    assert status == 426 and headers["Upgrade"] == "websocket"
    response = requests.post(server.url(STREAM_PATH), json={}, timeout=5)
    assert response.status_code == 426 and response.json()["message"]
    assert requests.get(server.url("/ping"), timeout=5).status_code == 200


def retry_connect(server: Server, seconds: float = 5) -> websocket.WebSocket:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect(server)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_limits_of_a_worker_idle_time_and_sigterm(serve, tmp_path):
    server = serve(write_model_dir(tmp_path, STREAM_MODEL), "--workers", "1",
                   "--max-streams", "2", "--stream-idle-timeout", "1")
    first, second = connect(server), connect(server)
    # A third stream past --max-streams: 503, and the two go on.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server)
    assert refused.value.status_code == 503
    second.send(json.dumps({"op": "echo"}))
    assert json.loads(second.recv())["count"] == 1
    # Idle past 1 s: the server closes it (pings do not count as activity).
    started = time.monotonic()
    code, reason, _ = receive_close(first)
    assert code == 1008 and "idle" in reason
    assert time.monotonic() - started < 3
    first.close()
    # SIGTERM: an open stream is told the server is going away (1001). The worker
    # counts the closed stream out once its thread ends: a client retries a 503.
    third = retry_connect(server)
    third.send(json.dumps({"op": "echo"}))
    third.recv()
    server.proc.send_signal(signal.SIGTERM)
    code, _, _ = receive_close(third)
    assert code == 1001
    third.close()
    second.close()
    assert server.proc.wait(30) == 0


def test_a_model_that_never_reads_is_ended_by_the_lifetime_limit(serve, tmp_path):
    server = serve(write_model_dir(tmp_path, STREAM_MODEL), "--workers", "1",
                   "--stream-max-seconds", "1")
    ws = connect(server)
    started = time.monotonic()
    ws.send(json.dumps({"op": "talk"}))
    code, reason, before = receive_close(ws)
    assert code == 1008 and "SERVING_STREAM_MAX_SECONDS" in reason
    assert len(before) > 10 and time.monotonic() - started < 3
    ws.close()


def test_without_stream_fn_each_message_is_one_invocation(serve, tmp_path):
    server = serve(write_model_dir(tmp_path, PLAIN_MODEL), "--workers", "1")
    ws = connect(server, headers={"Content-Type": "application/json"})
    try:
        for values in ([1, 2], [3, 4, 5]):
            ws.send(json.dumps({"values": values}))
            opcode, data = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_TEXT
            assert json.loads(data) == {"sum": sum(values)}
        ws.send(json.dumps({"values": [7, 8, 9], "stream": True}))
        opcode, data = ws.recv_data()  # websocket-client joins the fragments
        assert opcode == websocket.ABNF.OPCODE_TEXT and data == b"7 8 9 "
        # A message the model cannot take: the stream is closed with the reason.
        ws.send("{not json")
        code, reason, _ = receive_close(ws)
        assert code == 1008 and "JSON" in reason
    finally:
        ws.close()
    ws = connect(server)
    try:
        ws.send(json.dumps({"fail": True}))
        code, reason, _ = receive_close(ws)
        assert code == 1011 and "predict" in reason and "secret" not in reason
    finally:
        ws.close()
    wait_for(lambda: requests.get(server.url("/ping"), timeout=5).status_code == 200, 5,
             "the server to answer /ping")
