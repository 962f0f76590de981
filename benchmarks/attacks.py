"""The attacks of the "closed by default" issue, each against a real ``serve`` of two trees
in turn (an old commit's and this one's), with the status each got and what it cost the
worker that took it (its peak RSS, VmHWM, before and after).

    python benchmarks/attacks.py --old /path/to/old/checkout

``--old`` is a checkout of an earlier commit (``git worktree add /tmp/old c1144e3``); it
runs with this environment's packages, its own ``serving``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.server_helpers import free_port  # noqa: E402
from tests.torchserve.archives import write_archive  # noqa: E402

MODEL = '''
import time
import numpy as np

def model_fn(model_dir):
    return 2

def predict_fn(data, model, context):
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(data["sleep"])
        return {"slept": data["sleep"]}
    if isinstance(data, np.ndarray) and data.dtype.kind in "SUO":
        raise ValueError("no strings")
    return data
'''
ECHO = (b"def handle(data, context):\n    if data is None:\n        return None\n"
        b"    return [{'ok': True} for _ in data]\n")


class Serve:
    def __init__(self, tree: Path, root: Path, *args: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SM_", "SAGEMAKER_", "SERVING_"))}
        env.update(PYTHONPATH=str(tree), TMPDIR=str(root))
        self.log = open(root / f"serve-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1", *args],
            cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url("/ping"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve did not start: {(root / f'serve-{self.port}.log').read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def peak_mib(self) -> float:
        for line in Path(f"/proc/{self.worker()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def attacks(tree: Path, work: Path, opened: tuple[str, ...]
            ) -> list[tuple[str, str, float, float, float]]:
    """(attack, statuses, peak MiB before, after, seconds) for each attack.

    :param opened: the flags that open the management API on this tree (none on a tree
        where it was open by default).
    """
    rows = []
    model = work / "model" / "code"
    model.mkdir(parents=True)
    (model / "inference.py").write_text(MODEL)
    store = work / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")

    def run(name: str, server: Serve, attack) -> None:
        before = server.peak_mib()
        started = time.monotonic()
        statuses = attack(server)
        rows.append((name, statuses, before, server.peak_mib(), time.monotonic() - started))

    hosted = Serve(tree, work, "--model-dir", str(work / "model"), "--threads", "4",
                   "--stateful-sessions", "--sessions-path", str(work / "sessions"),
                   "--request-timeout", "5")
    try:
        run("KServe v2 BYTES: 82 KB body, 8,000 elements, one of 50 KB", hosted,
            lambda s: str(requests.post(s.url("/v2/models/default/infer"), json={
                "inputs": [{"name": "x", "datatype": "BYTES", "shape": [8000],
                            "data": ["a" * 50_000] + [""] * 7999}]}, timeout=60).status_code))
        run("KServe v1: 5.7 MB of []", hosted,
            lambda s: str(requests.post(s.url("/v1/models/default:predict"),
                                        data=b'{"instances": [' + b",".join([b"[]"] * 1_900_000)
                                        + b"]}", timeout=60).status_code))
        run("JSON nested 100,000 deep: v1, v2, /invocations with requestType", hosted,
            lambda s: ", ".join(str(requests.post(s.url(path), data=body, timeout=60,
                                                  headers={"Content-Type": "application/json"})
                                    .status_code) for path, body in (
                ("/v1/models/default:predict", b'{"instances": ' + deep(100_000) + b"}"),
                ("/v2/models/default/infer", b'{"inputs": ' + deep(100_000) + b"}"),
                ("/invocations", b'{"requestType": ' + deep(100_000) + b"}"))))
        run("Inference-Header-Content-Length: ², 5,000 digits", hosted,
            lambda s: ", ".join(str(requests.post(
                s.url("/v2/models/default/infer"), data=b"{}", timeout=10,
                headers={"Inference-Header-Content-Length": h}).status_code)
                for h in ("²", "9" * 5000)))
        run("v2 shape [0, 2**63]; 40 dimensions; outputs[].parameters [1]; UINT8 -1; "
            "FP16 1e300", hosted,
            lambda s: ", ".join(str(requests.post(s.url("/v2/models/default/infer"), json=doc,
                                                  timeout=10).status_code) for doc in (
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**63], "data": []}]},
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 40, "data": [1.0]}]},
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                 "outputs": [{"name": "output-0", "parameters": [1]}]},
                {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}]},
                {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1e300]}]})))

        def session(s: Serve) -> str:
            sid = requests.post(s.url("/invocations"), json={"requestType": "NEW_SESSION"},
                                timeout=10).json()["session_id"]
            out: list[int] = []

            def ask() -> None:
                out.append(requests.post(s.url("/invocations"), json={"sleep": 2}, timeout=60,
                                         headers={"X-Amzn-SageMaker-Session-Id": sid})
                           .status_code)

            threads = [threading.Thread(target=ask) for _ in range(4)]
            for thread in threads:
                thread.start()
                time.sleep(0.05)
            for thread in threads:
                thread.join()
            log = (work / f"serve-{s.port}.log").read_text()
            return ", ".join(map(str, sorted(out))) + (
                "; the worker retired" if "still running" in log else "")

        run("4 concurrent requests of one session, a 2 s model, --request-timeout 5",
            hosted, session)
        run("WebSocket: empty continuation frames for 5 s", hosted, flood)
    finally:
        hosted.stop()
    management_port = free_port()
    archived = Serve(tree, work, "--model-store", str(store), "--management-port",
                     str(management_port), *opened)
    try:
        many = b"[" + b",".join([b"[]"] * 1_900_000) + b"]"
        run("/predictions: 5.7 MB of [] as JSON", archived,
            lambda s: str(requests.post(s.url("/predictions/echo"), data=many, timeout=60,
                                        headers={"Content-Type": "application/json"})
                          .status_code))
        run("/predictions: JSON nested 100,000 deep", archived,
            lambda s: str(requests.post(s.url("/predictions/echo"), data=deep(100_000),
                                        timeout=60, headers={"Content-Type":
                                                             "application/json"}).status_code))
        with zipfile.ZipFile(store / "huge.mar", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("MAR-INF/MANIFEST.json", b" " * (300 * 2**20))
        manage = f"http://127.0.0.1:{management_port}/models"
        run(f"register a {(store / 'huge.mar').stat().st_size // 1024} KB .mar with a "
            f"300 MB manifest", archived,
            lambda s: str(requests.post(manage, params={"url": "huge.mar"},
                                        timeout=120).status_code))
        write_archive(work / "x.mar", "x", {"echo.py": ECHO}, handler="echo.py")
        run("register an archive outside the store (absolute path, file://)", archived,
            lambda s: ", ".join(str(requests.post(manage, params={"url": url, "model_name": n},
                                                  timeout=60).status_code)
                                for n, url in (("a1", str(work / "x.mar")),
                                               ("a2", f"file://{work}/x.mar"))))
    finally:
        archived.stop()
    return rows


def flood(s: Serve) -> str:
    """Empty continuation frames for at most 5 s: how many went before the stream closed."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /invocations-bidirectional-stream HTTP/1.1\r\nHost: x\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}"
                      f"\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        mask = b"\0\0\0\0"
        sock.sendall(bytes([0x01, 0x81]) + mask + b"x")
        frame = bytes([0x00, 0x80]) + mask
        sent, deadline = 0, time.monotonic() + 5
        sock.settimeout(0.001)
        try:
            while time.monotonic() < deadline:
                sock.sendall(frame * 100)
                sent += 100
                try:
                    if sock.recv(4096):
                        break  # the server's Close
                except (socket.timeout, BlockingIOError):
                    pass
        except OSError:
            pass
    closed = time.monotonic() < deadline
    return f"{sent} frames, {'closed' if closed else 'still open after 5 s'}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="an older checkout")
    args = parser.parse_args()
    results = {}
    for label, tree, opened in (("old", args.old.resolve(), ()),
                                ("new", REPO, ("--disable-token-auth", "--enable-model-api"))):
        with tempfile.TemporaryDirectory(prefix=f"attacks-{label}-") as work:
            results[label] = attacks(tree, Path(work), opened)
    print("| attack | before: status | worker peak RSS | after: status | worker peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    for old, new in zip(results["old"], results["new"]):
        print(f"| {old[0]} | {old[1]} | {old[2]:.0f} → {old[3]:.0f} MiB | {new[1]} | "
              f"{new[2]:.0f} → {new[3]:.0f} MiB |")


if __name__ == "__main__":
    main()
