"""What every load benchmark needs: a server in its own session, wrk, and the server's cost.

- :class:`ServerProcess` starts a command in a new session (``setsid``), so that every
  process it spawns — gunicorn workers, TorchServe's JVM and its Python workers — can be
  found by session id, measured together (PSS, CPU time) and stopped together, even when
  the command that started them has exited (``torchserve --start`` does).
- :func:`wrk` runs wrk against one URL and parses requests/s, latency percentiles and
  errors.
- :func:`measure` runs wrk while sampling the server's PSS, and reports the server's CPU
  time per request: a figure far less noisy than requests/s on a shared machine.

Nothing here knows any particular server; ``benchmarks/peers/run.py`` and
``benchmarks/load.py`` describe theirs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
POST_SCRIPT = os.path.join(HERE, "peers", "post.lua")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command (state ppid pgrp session …)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None  # gone


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid``."""
    pids = []
    for name in os.listdir("/proc"):
        fields = _stat(name) if name.isdigit() else None
        # a zombie has no memory to count
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def pss_kib(pids: t.Iterable[int]) -> int:
    """Total proportional set size: shared pages split between the processes sharing them."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pids: t.Iterable[int]) -> float:
    """User + system CPU time of the processes (and of their reaped children)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def free_port() -> int:
    """A free port below 32767: Multi Model Server refuses any above (its Connector checks
    ports against a Java short)."""
    for port in random.sample(range(20000, 32700), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32700")


class ServerProcess:
    """A server command in its own session; ``stop()`` ends every process of that session."""

    def __init__(self, name: str, argv: list[str], *, env: t.Mapping[str, str] | None = None,
                 cwd: str | None = None, log_path: str | None = None) -> None:
        self.name = name
        self.log_path = log_path or os.path.join("build", "bench-logs", f"{name}.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.sid = self.proc.pid

    def pids(self) -> list[int]:
        return session_pids(self.sid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_until(self, ready: t.Callable[[], bool], timeout: float) -> float:
        """Seconds from start until ``ready()`` held; raises with the log's tail past ``timeout``."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return time.monotonic() - self.started_at
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s; log:\n{self.log_tail()}")

    def stop(self, grace: float = 15) -> None:
        """SIGTERM to every process of the session, SIGKILL to what is left after ``grace``."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait
            while time.monotonic() < end and self.pids():
                try:
                    self.proc.wait(0.1)  # reap the leader, or it stays a zombie
                except subprocess.TimeoutExpired:
                    pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        left = self.pids()
        if left:
            raise RuntimeError(f"{self.name}: processes {left} survived SIGKILL")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(name: str, model_dir: t.Any, *args: str, venv: t.Any,
          logs: t.Any) -> tuple[ServerProcess, str]:
    """``serve`` from the environment ``venv`` on a free port of 127.0.0.1, logging to
    ``logs/<name>.log``: the server, and its /invocations URL."""
    port = free_port()
    server = ServerProcess(name, [os.path.join(str(venv), "bin", "serve"), "--model-dir",
                                  str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                  *args],
                           log_path=os.path.join(str(logs), f"{name}.log"))
    return server, f"http://127.0.0.1:{port}/invocations"


def tree_at(rev: str, build: t.Any) -> str:
    """``serving/`` and ``handlers/`` as they were at commit ``rev``, unpacked once under
    ``build/tree-<rev>``: an older server to measure against in the same run."""
    import io
    import subprocess
    import tarfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(str(build), f"tree-{rev}")
    if not os.path.isdir(os.path.join(target, "serving")):
        archive = subprocess.run(["git", "-C", repo, "archive", rev, "serving", "handlers"],
                                 capture_output=True, check=True).stdout
        os.makedirs(target, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target)
    return target


def serve_tree(name: str, tree: t.Any, model_dir: t.Any, *args: str, venv: t.Any,
               logs: t.Any, env: dict[str, str] | None = None) -> tuple[ServerProcess, str]:
    """As :func:`serve`, but the server's code is the tree at ``tree`` (:func:`tree_at`), in
    the same environment."""
    port = free_port()
    launcher = (f"import sys; sys.path.insert(0, {str(tree)!r}); from serving.cli import main; "
                "sys.exit(main())")
    server = ServerProcess(name, [os.path.join(str(venv), "bin", "python"), "-c", launcher,
                                  "--model-dir", str(model_dir), "--host", "127.0.0.1",
                                  "--port", str(port), *args],
                           log_path=os.path.join(str(logs), f"{name}.log"), env=env)
    return server, f"http://127.0.0.1:{port}/invocations"


def post(url: str, body: bytes, content_type: str = "application/json",
         timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type,
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers_like(url: str, body: bytes, expected: t.Any, tolerance: float = 1e-4) -> bool:
    """Whether ``url`` answers ``body`` with 200 and JSON numbers equal to ``expected``."""
    status, answer = post(url, body)
    if status != 200:
        return False
    return _close(json.loads(answer), expected, tolerance)


def _close(got: t.Any, want: t.Any, tolerance: float) -> bool:
    if isinstance(want, list):
        return (isinstance(got, list) and len(got) == len(want)
                and all(_close(g, w, tolerance) for g, w in zip(got, want)))
    return isinstance(got, (int, float)) and abs(got - want) <= tolerance * max(1, abs(want))


@dataclasses.dataclass
class Load:
    """What one wrk run measured."""

    clients: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers, socket errors and timeouts
    pss_mib: float = 0.0  # the server's peak total PSS during the run
    cpu_ms: float = 0.0  # the server's CPU time per request


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def wrk(url: str, payload_path: str, clients: int, seconds: float, *,
        content_type: str = "application/json", accept: str = "application/json",
        threads: int = 2) -> Load:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    env = {**os.environ, "WRK_PAYLOAD": payload_path, "WRK_CONTENT_TYPE": content_type,
           "WRK_ACCEPT": accept}
    out = subprocess.run(
        ["wrk", f"-t{min(threads, clients)}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
         "--timeout", "10s", "-s", POST_SCRIPT, url],
        env=env, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Load(clients=clients, requests=requests,
                rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                p50_ms=_ms(percentiles["50"]), p99_ms=_ms(percentiles["99"]), errors=errors)


def measure(server: ServerProcess, url: str, payload_path: str, clients: int,
            seconds: float, **wrk_options: t.Any) -> Load:
    """wrk against ``server``, with its peak PSS and its CPU time per request."""
    peak = [pss_kib(server.pids())]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], pss_kib(server.pids()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = cpu_seconds(server.pids())
    try:
        load = wrk(url, payload_path, clients, seconds, **wrk_options)
    finally:
        cpu_after = cpu_seconds(server.pids())
        done.set()
        sampler.join()
    load.pss_mib = peak[0] / 1024
    load.cpu_ms = (cpu_after - cpu_before) * 1000 / max(load.requests, 1)
    return load


def table(header: t.Sequence[str], rows: t.Iterable[t.Sequence[t.Any]]) -> str:
    """A Markdown table; numbers right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(markdown: str, marker: str) -> None:
    """Replace what BENCHMARKS.md holds between ``<!-- marker -->`` and ``<!-- end marker -->``."""
    path = os.path.join(os.path.dirname(HERE), "BENCHMARKS.md")
    with open(path) as f:
        text = f.read()
    start, end = f"<!-- {marker} -->", f"<!-- end {marker} -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = f"{before}{start}\n{markdown}\n{end}{after}"
    else:
        text = f"{text.rstrip()}\n\n{start}\n{markdown}\n{end}\n"
    with open(path, "w") as f:
        f.write(text)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} × {cpu}, Linux {os.uname().release}, Python {sys.version.split()[0]}"


def old_against_new(trees: t.Mapping[str, t.Any], model_dir: t.Any, body: bytes, path: str,
                    payload: t.Any, *, rounds: int, duration: float, venv: t.Any, logs: t.Any,
                    env: dict[str, str] | None = None,
                    clients: t.Sequence[int] = (8, 32)) -> dict[tuple[str, int], list[Load]]:
    """``serve --workers 2`` from each tree (``{"old": tree, "new": tree}``) in turn, round
    after round, the order turned every other round (old, new, new, old, ...: drift on a
    shared machine, and whatever the first server of a round leaves behind, fall on both
    alike), wrk
    at each number of ``clients`` posting ``body`` to ``path``; every run's :class:`Load`,
    by (tree's label, clients)."""
    results: dict[tuple[str, int], list[Load]] = {}
    with open(payload, "wb") as f:
        f.write(body)
    for round_ in range(rounds):
        order = list(trees.items())
        for label, tree in order if round_ % 2 == 0 else reversed(order):
            server, url = serve_tree(f"{label}-{round_}", tree, model_dir, "--workers", "2",
                                     venv=venv, logs=logs, env=env)
            url = url.replace("/invocations", path)
            try:
                server.wait_until(lambda: post(url, body)[0] == 200, 120)
                for count in clients:
                    measure(server, url, str(payload), count, 1.0)  # warm-up
                    load = measure(server, url, str(payload), count, duration)
                    if load.errors:
                        raise RuntimeError(f"{label} {model_dir}: {load.errors} errors")
                    results.setdefault((label, count), []).append(load)
            finally:
                server.stop()
    return results


def median_of(runs: t.Sequence[Load], field: str) -> float:
    import statistics

    return statistics.median(getattr(run, field) for run in runs)


def old_new_row(label: str, clients: int, old_runs: t.Sequence[Load],
                new_runs: t.Sequence[Load], p50: bool = True) -> list[str]:
    """One table row of medians, old against new: req/s (and new × old), p50 / p99 ms, CPU ms a
    request (and old ÷ new)."""
    med = median_of
    latency = (lambda runs: f"{med(runs, 'p50_ms'):.1f} / {med(runs, 'p99_ms'):.1f}") if p50 \
        else (lambda runs: f"{med(runs, 'p99_ms'):.1f}")
    return [label, str(clients), f"{med(old_runs, 'rps'):.0f}", f"{med(new_runs, 'rps'):.0f}",
            f"{med(new_runs, 'rps') / med(old_runs, 'rps'):.2f}", latency(old_runs),
            latency(new_runs), f"{med(old_runs, 'cpu_ms'):.3f}", f"{med(new_runs, 'cpu_ms'):.3f}",
            f"{med(old_runs, 'cpu_ms') / med(new_runs, 'cpu_ms'):.2f}"]
