"""Talking to a real ``serve --multi-model`` with two workers: what the multi-model tests
share."""

from __future__ import annotations

import requests


def start(serve, tmp_path, *flags, env=None):
    empty = tmp_path / "no-model"  # SageMaker starts a multi-model container with none
    empty.mkdir()
    return serve(empty, "--multi-model", "--workers", "2", "--threads", "2", *flags, env=env)


def load(server, name, url):
    return requests.post(server.url("/models"), json={"model_name": name, "url": str(url)},
                         timeout=60)


def every_worker(ask, tries: int = 60):
    """Call ``ask()`` (→ a response whose JSON has ``pid``) until two workers answered;
    new connections each time, so both workers get turns. Returns the responses."""
    answers: dict[int, requests.Response] = {}
    for _ in range(tries):
        response = ask()
        assert response.status_code == 200, response.text
        answers.setdefault(response.json()["pid"], response)
        if len(answers) == 2:
            return list(answers.values())
    raise AssertionError(f"only workers {sorted(answers)} answered in {tries} requests")


def post_fresh(url, **kwargs):
    """A request on a connection of its own (Connection: close), so that the two workers
    take turns instead of one kept-alive connection always reaching the same one."""
    return requests.post(url, headers={"Connection": "close", **kwargs.pop("headers", {})},
                         timeout=30, **kwargs)
