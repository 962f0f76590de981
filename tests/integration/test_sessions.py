"""Stateful sessions: a real ``serve`` with 2 workers, the session kept in files every
worker shares (open on one worker, use on the other, a worker SIGKILLed meanwhile), as
boto3's ``invoke_endpoint(SessionId=...)`` sends the headers."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import requests

from tests.server_helpers import Server, wait_for, write_model_dir

SESSION_MODEL = """
    import os

    def model_fn(model_dir):
        return None

    def predict_fn(data, model, context):
        session = context.session
        if session is None:
            return {"pid": os.getpid(), "session": None}
        session.state.setdefault("words", []).append(data["word"])
        with open(os.path.join(session.directory, "seen"), "a") as f:
            f.write(data["word"] + "\\n")
        return {"pid": os.getpid(), "session": session.id, "words": session.state["words"],
                "opened_by": session.state.get("opened_by")}

    def open_session_fn(session, model, context):
        session.state["opened_by"] = os.getpid()

    def close_session_fn(session, model, context):
        with open(os.path.join(os.environ["MARKERS"], session.id), "w") as f:
            f.write(" ".join(session.state["words"]))
"""

NEW = {"requestType": "NEW_SESSION"}
CLOSE = {"requestType": "CLOSE"}
_EXPIRES = re.compile(r"([0-9a-f-]+); Expires=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\Z")


def post(server: Server, body, session: str | None = None, **headers: str):
    if session is not None:
        headers["X-Amzn-SageMaker-Session-Id"] = session
    # A new connection each time, so the two workers both get turns.
    return requests.post(server.url(), json=body, timeout=10,
                         headers={"Connection": "close", **headers})


def open_session(server: Server) -> str:
    response = post(server, NEW, session="NEW_SESSION")  # as boto3 sends it
    assert response.status_code == 200, response.text
    match = _EXPIRES.match(response.headers["X-Amzn-SageMaker-New-Session-Id"])
    assert match, response.headers["X-Amzn-SageMaker-New-Session-Id"]
    assert response.json() == {"session_id": match[1], "expires": match[2]}
    return match[1]


@pytest.fixture
def markers(tmp_path):
    path = tmp_path / "markers"
    path.mkdir()
    return path


def sessions_server(serve, tmp_path, markers, *flags: str) -> Server:
    model_dir = write_model_dir(tmp_path, SESSION_MODEL)
    return serve(model_dir, "--workers", "2", "--stateful-sessions",
                 "--sessions-path", str(tmp_path / "sessions"), *flags,
                 env={"MARKERS": str(markers)})


def test_a_session_opened_on_one_worker_is_used_on_the_other_and_closed(serve, tmp_path,
                                                                        markers):
    server = sessions_server(serve, tmp_path, markers)
    session = open_session(server)
    expires = time.strptime(post(server, NEW).headers["X-Amzn-SageMaker-New-Session-Id"]
                            .split("Expires=")[1], "%Y-%m-%dT%H:%M:%SZ")
    assert 1100 < time.mktime(expires) - time.mktime(time.gmtime()) <= 1200
    pids, words = set(), []
    deadline = time.monotonic() + 30
    while len(pids) < 2 or len(words) < 6:
        assert time.monotonic() < deadline, f"only workers {pids} answered"
        word = f"w{len(words)}"
        answer = post(server, {"word": word}, session=session)
        assert answer.status_code == 200, answer.text
        words.append(word)
        body = answer.json()
        # Each request sees what every earlier one kept, whichever worker took it.
        assert body["session"] == session and body["words"] == words
        assert body["opened_by"] is not None
        pids.add(body["pid"])
    assert post(server, {"word": "x"}).json()["session"] is None  # no header: none
    closed = post(server, CLOSE, session=session)
    assert closed.status_code == 200, closed.text
    assert closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session
    assert (markers / session).read_text() == " ".join(words)  # close_session_fn ran
    # Closed: its id is a 400 now, with our JSON, and its files are gone.
    after = post(server, {"word": "late"}, session=session)
    assert after.status_code == 400 and "no session" in after.json()["message"]
    assert post(server, CLOSE, session=session).status_code == 400
    assert not [name for name in os.listdir(tmp_path / "sessions")
                if name.startswith(session)]


def test_a_session_survives_a_worker_killed_and_expires_on_time(serve, tmp_path, markers):
    server = sessions_server(serve, tmp_path, markers, "--sessions-expiration", "5")
    opened = time.monotonic()
    session = open_session(server)
    first = post(server, {"word": "a"}, session=session).json()
    os.kill(first["pid"], signal.SIGKILL)  # the worker that answered it
    # The master starts a new worker; the session is still there, on any worker.
    def answered() -> bool:
        response = post(server, {"word": "b"}, session=session)
        return response.status_code == 200 and response.json()["words"][-1] == "b"
    wait_for(answered, 15, "the session answered after a worker was killed")
    assert post(server, {"word": "c"}, session=session).json()["words"][:1] == ["a"]
    time.sleep(max(0.0, opened + 5.2 - time.monotonic()))
    expired = post(server, {"word": "d"}, session=session)
    assert expired.status_code == 400 and "expired" in expired.json()["message"]
    assert post(server, {"word": "e"}, session=session).status_code == 400


def test_malformed_and_unknown_sessions_are_400(serve, tmp_path, markers):
    server = sessions_server(serve, tmp_path, markers)
    for bad in ("-starts-with-dash", "has space", "x" * 257, "under_score"):
        response = post(server, {"word": "a"}, session=bad)
        assert response.status_code == 400, bad
        assert "X-Amzn-SageMaker-Session-Id" in response.json()["message"]
    unknown = post(server, {"word": "a"}, session="0a1b2c3d-0000-4000-8000-000000000000")
    assert unknown.status_code == 400 and "no session" in unknown.json()["message"]
    assert post(server, CLOSE).status_code == 400  # CLOSE without an id
    assert post(server, {"requestType": "REOPEN"}).status_code == 400
    # A body that merely mentions requestType as data is the model's.
    assert post(server, {"word": "requestType"}).status_code == 200
    assert requests.get(server.url("/ping"), timeout=5).status_code == 200


def test_session_requests_while_sessions_are_off_are_400(serve, tmp_path):
    server = serve(write_model_dir(tmp_path, SESSION_MODEL), "--workers", "1")
    for body, session in ((NEW, "NEW_SESSION"), (NEW, None), ({"word": "a"}, "abc-1")):
        response = post(server, body, session=session)
        assert response.status_code == 400
        assert "SAGEMAKER_ENABLE_STATEFUL_SESSIONS" in response.json()["message"]
    assert post(server, {"word": "a"}).json()["session"] is None


def test_a_stream_joins_a_session_and_keeps_it(serve, tmp_path, markers):
    """A WebSocket stream whose upgrade names the session sees its state, and what it
    keeps there the session's next invocation sees."""
    from tests.integration.test_bidirectional_stream import connect

    server = sessions_server(serve, tmp_path, markers)
    session = open_session(server)
    post(server, {"word": "before"}, session=session)
    ws = connect(server, headers={"X-Amzn-SageMaker-Session-Id": session,
                                  "Content-Type": "application/json"})
    try:
        ws.send(json.dumps({"word": "streamed"}))
        answer = json.loads(ws.recv())
        assert answer["session"] == session and answer["words"] == ["before", "streamed"]
    finally:
        ws.close()
    def kept() -> bool:
        words = post(server, {"word": "after"}, session=session).json()["words"]
        return words[:2] == ["before", "streamed"]
    wait_for(kept, 5, "the stream's state in the session")


def test_a_sessions_path_that_cannot_be_written_stops_serve_at_start(tmp_path):
    from tests.server_helpers import run_serve

    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_serve("--model-dir", str(write_model_dir(tmp_path, SESSION_MODEL)),
                     "--stateful-sessions", "--sessions-path", str(blocker / "sessions"))
    assert done.returncode == 1
    assert "serve: error: SAGEMAKER_SESSIONS_PATH" in done.stderr
    assert "Traceback" not in done.stderr
