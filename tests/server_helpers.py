"""A real ``serve`` process on a free port, model directories and wheels made on the fly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without serving settings, plus ``extra``."""
    # SETUPTOOLS_USE_DISTUTILS is dropped too: serve must manage Chainer without it, as
    # users run it.
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("SM_", "SAGEMAKER_", "SERVING_", "SETUPTOOLS_USE_DISTUTILS"))}
    environ.update(extra or {})
    return environ


def write_model_dir(root: Path, inference: str, files: dict[str, str] | None = None) -> Path:
    """A model directory with ``code/inference.py`` and any other files."""
    code = root / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(textwrap.dedent(inference))
    for name, text in (files or {}).items():
        path = root / "model" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "model"


def write_wheel(directory: Path, name: str, files: dict[str, str],
                entry_points: str | None = None) -> Path:
    """A minimal pure-Python wheel, so that a test needs no network and no build step."""
    import zipfile

    path = directory / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    if entry_points:
        files[f"{info}/entry_points.txt"] = textwrap.dedent(entry_points)
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as whl:
        for filename, text in files.items():
            whl.writestr(filename, text)
    return path


def pip_install(target: Path | str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(target)], check=True)


def pip_uninstall(name: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", name], check=False)


class Server:
    """One ``python -m serving`` process; its output goes to a log file."""

    def __init__(self, model_dir: Path | str, *args: str, env: dict[str, str] | None = None,
                 log_path: Path, command: list[str] | None = None) -> None:
        self.port = free_port()
        self.model_dir = Path(model_dir)
        self.log_path = log_path
        argv = [*(command or [sys.executable, "-m", "serving"]),
                "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
                *args]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=server_env(env), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO)

    def url(self, path: str = "/invocations") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60, headers=None) -> None:
        """Until /ping answers 200. ``headers``: a function giving the headers to send
        (a key that exists only once the server has written it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log}")
            try:
                sent = headers() if headers is not None else None
                if requests.get(self.url("/ping"), headers=sent, timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout, OSError, ValueError, KeyError):
                pass  # not listening yet (or no key file yet), or no worker has loaded
            time.sleep(0.1)
        # Stopped before the test fails: a caller that made it inside a helper has no
        # handle left to stop it with, and it would serve on, unasked, after the run.
        self.kill()
        raise AssertionError(f"serve not ready after {timeout}s:\n{self.log}")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def batch_sizes(log: str) -> list[int]:
    """The request count of every batch the batcher ran, from its DEBUG lines in ``log``."""
    return [int(n) for n in re.findall(r"batch of (\d+) requests", log)]


def run_serve(*args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``serve`` to completion (for start-up failures)."""
    return subprocess.run([sys.executable, "-m", "serving", *args], env=server_env(env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


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
