"""Fault injection against a real ``serve``: a model that misbehaves on request, raw sockets.

Every test here starts its own server on 127.0.0.1 and bounds what it sends in count
and time.
"""

from __future__ import annotations

import socket
import weakref
from pathlib import Path

import pytest

from tests.server_helpers import REPO, write_model_dir

NUMPY_LINEAR = REPO / "examples" / "numpy-linear" / "model"

#: A model that does what the request asks: sleep, raise, report its worker.
FAULTY_INFERENCE = """
    import os
    import pathlib
    import sys
    import time

    import numpy as np


    def model_fn(model_dir):
        delay = pathlib.Path(model_dir, "load_delay.txt")
        if delay.exists():
            time.sleep(float(delay.read_text()))
        with open(pathlib.Path(model_dir, "loads.txt"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        return 2.0


    def predict_fn(data, model):
        if isinstance(data, dict):
            if "sleep" in data:
                time.sleep(data["sleep"])
                return {"slept": data["sleep"], "pid": os.getpid()}
            if "open" in data:
                return open(data["open"]).read()  # FileNotFoundError, path in its text
            if "pid" in data:
                return {"pid": os.getpid()}
            if "exit" in data:
                sys.exit(3)  # SystemExit is not an Exception: no handler may lose a thread
        return np.asarray(data, dtype=np.float64) * model
"""


@pytest.fixture
def faulty_model(tmp_path) -> Path:
    return write_model_dir(tmp_path, FAULTY_INFERENCE)


def worker_pids(server) -> list[int]:
    """The PIDs of the server's workers (the master's children), from /proc."""
    master = server.proc.pid
    children = Path(f"/proc/{master}/task/{master}/children")
    if children.exists():
        return [int(p) for p in children.read_text().split()]
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status (VmRSS, VmHWM = peak RSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


#: Bytes read off a socket past the response asked for: the start of the next one, when
#: pipelined answers arrive in one read (as they do on a busy machine).
_UNREAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket; what was read
    past it is kept for the next call on the same socket."""
    sock.settimeout(timeout)
    data = _UNREAD.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if body[length:]:
        _UNREAD[sock] = body[length:]
    return status, headers, body[:length]


def raw_exchange(port: int, data: bytes, half_close: bool = False,
                 timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_response(sock, timeout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


