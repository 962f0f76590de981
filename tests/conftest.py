import os

import pytest
from hypothesis import settings

from tests.server_helpers import Server

# Property and fuzz tests explore new inputs on every developer run; CI replays a fixed
# sequence so that a landing is not decided by chance (what a developer finds becomes a
# regression test).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Settings the server reads from the environment: a test sets the ones it means.
_SERVING_ENV = ("SM_", "SAGEMAKER_", "SERVING_")


@pytest.fixture(autouse=True)
def _clean_serving_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(_SERVING_ENV):
            monkeypatch.delenv(name)


@pytest.fixture
def serve(tmp_path):
    """``serve(model_dir, *flags, env=..., ready=True)`` → a running :class:`Server`."""
    servers: list[Server] = []

    def start(model_dir, *args, env=None, ready=True, command=None):
        server = Server(model_dir, *args, env=env, command=command,
                        log_path=tmp_path / f"serve-{len(servers)}.log")
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.kill()
