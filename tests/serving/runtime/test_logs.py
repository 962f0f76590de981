"""Our log lines carry the request id, and code that logs its own request_id in ``extra``
(Ray Serve does, in every replica) still logs."""

from __future__ import annotations

import io
import logging

import pytest

from serving.runtime import logs


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure(logging.INFO)
    stream = io.StringIO()
    root.handlers[0].setStream(stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_lines_carry_the_request_id_of_their_thread(captured):
    token = logs.request_id.set("req-42")
    try:
        logging.getLogger("user").info("predicting")
    finally:
        logs.request_id.reset(token)
    logging.getLogger("user").info("idle")
    first, second = captured.getvalue().splitlines()
    assert "[req-42] user: predicting" in first and "[-] user: idle" in second


def test_a_request_id_given_in_extra_is_kept_not_refused(captured):
    token = logs.request_id.set("ours")
    try:
        logging.getLogger("ray.serve").info("access", extra={"request_id": "theirs"})
    finally:
        logs.request_id.reset(token)
    assert "[theirs] ray.serve: access" in captured.getvalue()
