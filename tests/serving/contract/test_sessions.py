"""The session store on its own: expiry, the sweep, atomic records, taking turns."""

from __future__ import annotations

import os
import threading
import time

import pytest

from serving import errors
from serving.contract.sessions import (
    SessionStore,
    check_session_id,
    session_request_type,
)


@pytest.fixture
def store(tmp_path):
    return SessionStore(str(tmp_path / "sessions"), expiration=60)


def test_state_kept_between_uses_and_gone_with_the_session(store):
    session = store.open()
    with store.use(session.id) as held:
        held.state["turns"] = 1
        marker = os.path.join(held.directory, "file")
        open(marker, "w").close()
    with store.use(session.id) as held:
        assert held.state == {"turns": 1} and os.path.exists(marker)
    store.close(session.id)
    assert not os.path.exists(marker) and os.listdir(store.path) == []
    with pytest.raises(errors.BadRequest, match="no session"):
        store.get(session.id)


def test_expired_sessions_are_refused_on_use_and_swept(store):
    old, young = store.open(), store.open()
    for session in (old, young):
        with store.use(session.id) as held:
            held.expires = time.time() + (1 if session is young else -1)
            held.state["x"] = 1  # a change, so the record is written back
    with pytest.raises(errors.BadRequest, match="expired"):
        store.get(old.id)
    assert not any(name.startswith(old.id) for name in os.listdir(store.path))
    assert store.sweep(now=time.time() + 2) == 1  # young, expired by then
    assert os.listdir(store.path) == []


def test_a_half_written_record_never_shows_and_an_oversized_state_is_refused(store):
    session = store.open()
    # What a worker killed mid-write leaves: a temporary file, never the record half done.
    with open(os.path.join(store.path, ".tmp-abandoned"), "wb") as f:
        f.write(b'{"expires": 1')
    assert store.get(session.id).id == session.id
    with store.use(session.id) as held:
        held.state["kept"] = 1
    with pytest.raises(errors.ModelError, match="over 1048576 bytes"):
        with store.use(session.id) as held:
            held.state["big"] = "x" * (1024 * 1024)
    assert store.get(session.id).state == {"kept": 1}  # the record before it
    with pytest.raises(errors.ModelError, match="must be JSON"):
        with store.use(session.id) as held:
            held.state["model"] = object()
    assert store.get(session.id).state == {"kept": 1}


def test_two_requests_of_one_session_take_turns(store):
    session = store.open()
    inside, order = threading.Event(), []

    def second() -> None:
        inside.wait(5)
        with store.use(session.id) as held:
            order.append(("second", dict(held.state)))

    thread = threading.Thread(target=second)
    thread.start()
    with store.use(session.id) as held:
        inside.set()
        time.sleep(0.2)  # the second waits for the lock meanwhile
        held.state["first"] = True
        order.append(("first", dict(held.state)))
    thread.join(5)
    assert order == [("first", {"first": True}), ("second", {"first": True})]


def test_session_ids_and_request_types():
    assert check_session_id("NEW_SESSION") == "NEW_SESSION"
    assert check_session_id("a-b--c9") == "a-b--c9"
    for bad in ("-a", "a-", "a b", "a_b", "x" * 257, ""):
        with pytest.raises(errors.BadRequest):
            check_session_id(bad)
    assert session_request_type(b'{"requestType": "NEW_SESSION"}', 2**20) == "NEW_SESSION"
    assert session_request_type(b'{"requestType": "CLOSE", "x": 1}', 2**20) == "CLOSE"
    assert session_request_type(b'{"text": "requestType"}', 2**20) is None
    assert session_request_type(b'["requestType"]', 2**20) is None
    assert session_request_type(b'not json "requestType"', 2**20) is None
    with pytest.raises(errors.BadRequest):
        session_request_type(b'{"requestType": "OPEN"}', 2**20)


def test_a_directory_that_cannot_be_made_is_a_start_up_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(errors.StartupError, match="SAGEMAKER_SESSIONS_PATH"):
        SessionStore(str(blocker / "sessions"), expiration=60)


def test_open_sessions_are_bounded(store):
    store.max_sessions = 2
    first = store.open()
    store.open()
    with pytest.raises(errors.ClientError, match="2 sessions are open") as refused:
        store.open()
    assert refused.value.status_code == 429
    store.close(first.id)
    assert store.open().id  # room again
