"""Servers for the Ray tests: ``serve --engine ray`` on a local Ray instance it starts
itself (bounded to this machine's CPUs), and ``serve`` on gunicorn to compare with.

Every server runs in a session of its own: on leaving, SIGTERM must stop it (and the Ray
instance it started) with status 0; anything left of its process group is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import requests

from tests.server_helpers import REPO, free_port, server_env

#: Starting Ray, its proxy and two replicas that import torch takes a while on 2 cores.
RAY_READY_SECONDS = 180


class Served:
    """One ``serve`` process (either engine), its own process group."""

    def __init__(self, model_dir, *args: str, engine: str, log_path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        argv = [sys.executable, "-m", "serving", "--engine", engine, "--model-dir",
                str(model_dir), "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(argv, env=server_env({"RAY_DEDUP_LOGS": "0", **(env or {})}),
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)

    def url(self, path: str = "/invocations") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = RAY_READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log[-6000:]}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(self.url("/ping"), timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"serve not ready after {timeout}s:\n{self.log[-6000:]}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM; the exit status, or None when it had to be killed."""
        status = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group still there
        if self.proc.poll() is None:
            self.proc.wait()
        self._log.close()
        return status


@contextlib.contextmanager
def serving(model_dir, *args: str, engine: str, log_path, env=None):
    server = Served(model_dir, *args, engine=engine, log_path=log_path, env=env)
    try:
        server.wait_ready()
        yield server
    except BaseException:
        server.stop(timeout=10)
        raise
    status = server.stop()
    assert status == 0, f"serve --engine {engine} exited with {status} on SIGTERM:\n" \
                        f"{server.log[-4000:]}"
