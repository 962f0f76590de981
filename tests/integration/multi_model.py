"""Talking to a real ``serve --multi-model`` with two workers: what the multi-model tests
share."""

from __future__ import annotations

import requests


def start(serve, tmp_path, *flags, env=None):
    empty = tmp_path / "no-model"  # SageMaker starts a multi-model container with none
    empty.mkdir()
    # Models load from under tmp_path here, as from /opt/ml/models on SageMaker.
    return serve(empty, "--multi-model", "--workers", "2", "--threads", "2",
                 "--multi-model-root", str(tmp_path), *flags, env=env)


def load(server, name, url):
    return requests.post(server.url("/models"), json={"model_name": name, "url": str(url)},
                         timeout=60)


def post_fresh(url, **kwargs):
    """A request on a connection of its own (Connection: close), so that the two workers
    take turns instead of one kept-alive connection always reaching the same one."""
    return requests.post(url, headers={"Connection": "close", **kwargs.pop("headers", {})},
                         timeout=30, **kwargs)
