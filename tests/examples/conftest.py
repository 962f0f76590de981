"""Example models built from nothing into a temporary copy of the example's folder."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys

from tests.server_helpers import REPO, Server

SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"
SDK_CLIENT = REPO / "tests" / "clients" / "sdk_v2_client.py"


def build_example(name: str, destination) -> object:
    """Copy examples/<name>/model (the code) and run its make_model.py into the copy."""
    model_dir = destination / "model"
    shutil.copytree(REPO / "examples" / name / "model", model_dir,
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, str(REPO / "examples" / name / "make_model.py"),
                    str(model_dir)], check=True, capture_output=True, timeout=600)
    return model_dir


def sdk(server, scenario: str, payload=None) -> dict:
    """Run the SDK v2 client from its own environment against ``server``."""
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: run `make install`"
    command = [str(SDK_PYTHON), str(SDK_CLIENT), server.url(""), scenario]
    if payload is not None:
        command.append(json.dumps(payload))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def served_example(name: str, tmp_path_factory, *flags: str):
    """Build example ``name`` from nothing and serve it; on leaving, SIGTERM must exit 0."""
    root = tmp_path_factory.mktemp(name)
    server = Server(build_example(name, root), "--workers", "1", *flags,
                    log_path=root / "serve.log")
    try:
        server.wait_ready()
        yield server
        assert server.terminate() == 0, server.log
    finally:
        server.kill()
