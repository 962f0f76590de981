"""TorchServe 0.12 itself, from its own environment (``make test-torchserve`` makes it:
build/peers/envs/torchserve, as the peers benchmark uses), serving the archives its own
``torch-model-archiver`` built; and our server on the same store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.server_helpers import REPO, free_port
from tests.torchserve.archives import ARCHIVES, build_with_archiver

ENV = Path(os.environ.get("TORCHSERVE_ENV", REPO / "build" / "peers" / "envs" / "torchserve"))


def _environment() -> Path:
    if not (ENV / "bin" / "torchserve").exists():
        pytest.fail(f"TorchServe's environment is not at {ENV}: make test-torchserve makes it "
                    f"(or set TORCHSERVE_ENV)")
    return ENV


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """The model store: every archive of tests/torchserve/archives.py, by the archiver."""
    env = _environment()
    store = tmp_path_factory.mktemp("store")
    build_with_archiver(env / "bin" / "torch-model-archiver", store,
                        tmp_path_factory.mktemp("model-files"))
    return store


def write_config(path: Path, port: int, management_port: int, more: str = "",
                 secure: bool = False) -> Path:
    """A config.properties as a TorchServe user writes one, listening on these ports;
    ``secure``: with TorchServe's security defaults (token authorization on, the model
    API off), else with both opened."""
    path.write_text(
        f"inference_address=http://127.0.0.1:{port}\n"
        f"management_address=http://127.0.0.1:{management_port}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\n"
        # Its gRPC ports (7070, 7071 by default), so that two TorchServes run side by side.
        f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n"
        "default_workers_per_model=1\n"
        "install_py_dep_per_model=false\n"
        # Registering and unregistering through the management API (off by default
        # since TorchServe 0.11), and no keys.
        + ("" if secure else "disable_token_authorization=true\nenable_model_api=true\n")
        + more)
    return path


class TorchServe:
    def __init__(self, store: Path, run: Path, more_config: str = "",
                 models: tuple[str, ...] = ("--models", "all"), secure: bool = False) -> None:
        env = _environment()
        self.port, self.management_port = free_port(), free_port()
        self.run = run  # its key_file.json is written there (its working directory)
        config = write_config(run / "config.properties", self.port, self.management_port,
                              more_config, secure)
        self.log_path = run / "torchserve.log"
        self._log = open(self.log_path, "wb")
        variables = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
        variables.update(PATH=f"{env / 'bin'}:{os.environ['PATH']}",
                         LOG_LOCATION=str(run / "logs"), METRICS_LOCATION=str(run / "logs"),
                         # Its pid file goes there: another TorchServe elsewhere on the
                         # machine does not stop this one starting.
                         TMPDIR=str(run))
        self.proc = subprocess.Popen(
            [str(env / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
             "--model-store", str(store), *models, "--ts-config", str(config),
             *(() if secure else ("--disable-token-auth",))],
            env=variables, stdout=self._log, stderr=subprocess.STDOUT, cwd=run,
            start_new_session=True)  # its Java frontend and Python workers: one group

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def management(self, path: str) -> str:
        return f"http://127.0.0.1:{self.management_port}{path}"

    def keys(self) -> dict[str, str]:
        """Its token authorization keys, from its key_file.json."""
        import json

        return {kind: entry["key"] for kind, entry in
                json.loads((self.run / "key_file.json").read_text()).items()}

    def wait_ready(self, models: list[str], timeout: float = 180, secure: bool = False) -> None:
        """Until each model's workers are READY (its management API says so)."""
        deadline = time.monotonic() + timeout
        waiting = list(models)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"torchserve exited:\n{self.log_path.read_text()}")
            try:
                headers = ({"Authorization": f"Bearer {self.keys()['management']}"}
                           if secure else None)
                for model in list(waiting):
                    answer = requests.get(self.management(f"/models/{model}"), timeout=5,
                                          headers=headers)
                    workers = answer.json()[0]["workers"] if answer.ok else []
                    if workers and all(w["status"] == "READY" for w in workers):
                        waiting.remove(model)
                if not waiting:
                    return
            except (requests.RequestException, ValueError, KeyError, IndexError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"torchserve: {waiting} not ready after {timeout}s")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # the group: Java and the Python workers
                self.proc.wait(30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


@pytest.fixture(scope="session")
def torchserve(store, tmp_path_factory):
    server = TorchServe(store, tmp_path_factory.mktemp("torchserve"))
    try:
        server.wait_ready(list(ARCHIVES))
        yield server
    finally:
        server.stop()
