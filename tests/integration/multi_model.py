"""Talking to a real ``serve --multi-model`` with two workers: what the multi-model tests
share."""

from __future__ import annotations

import time

import requests


def start(serve, tmp_path, *flags, env=None):
    empty = tmp_path / "no-model"  # SageMaker starts a multi-model container with none
    empty.mkdir()
    return serve(empty, "--multi-model", "--workers", "2", "--threads", "2", *flags, env=env)


def load(server, name, url):
    return requests.post(server.url("/models"), json={"model_name": name, "url": str(url)},
                         timeout=60)


def every_worker(ask, seconds: float = 30.0):
    """Call ``ask()`` (→ a response whose JSON has ``pid``) until two workers answered;
    new connections each time, so both workers get turns. Returns the responses.

    Bounded in time, not in tries: ``serve`` is ready once one worker answers, and gunicorn
    forks the second after it, which on a loaded machine may come after many requests.
    """
    answers: dict[int, requests.Response] = {}
    deadline = time.monotonic() + seconds
    asked = 0
    while True:
        response = ask()
        asked += 1
        assert response.status_code == 200, response.text
        answers.setdefault(response.json()["pid"], response)
        if len(answers) == 2:
            return list(answers.values())
        if time.monotonic() > deadline:
            raise AssertionError(f"only workers {sorted(answers)} answered {asked} requests "
                                 f"in {seconds:g} s")
        if asked >= 60:
            time.sleep(0.05)  # the second worker is still booting: let it


def post_fresh(url, **kwargs):
    """A request on a connection of its own (Connection: close), so that the two workers
    take turns instead of one kept-alive connection always reaching the same one."""
    return requests.post(url, headers={"Connection": "close", **kwargs.pop("headers", {})},
                         timeout=30, **kwargs)
