"""Fault figures: slow clients, stuck predictions, memory bombs, reloads, shutdown.

Run: make bench-faults   (or .venv/bin/python benchmarks/faults.py)

Each scenario starts a real ``serve`` on 127.0.0.1 (2 workers × 4 threads, the
numpy-linear example or a model that misbehaves on request), attacks it for a
bounded time, and measures a normal client beside the attack. The normal client's
latency without any attack is measured in the same run as the baseline.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.faults.attackers import SlowClients, SteadyClient  # noqa: E402
from tests.faults.conftest import (  # noqa: E402
    FAULTY_INFERENCE,
    NUMPY_LINEAR,
    memory_kib,
    percentile,
    worker_pids,
)
from tests.faults.test_memory_bombs import npz_bomb, png_of_zeros  # noqa: E402
from tests.faults.test_slow_clients import normal_client  # noqa: E402
from tests.server_helpers import Server, wait_for, write_model_dir  # noqa: E402

SECONDS = 8  # of normal traffic per measurement
rows: list[tuple[str, str, str]] = []


def start(model_dir: Path, *args: str, ready_timeout: float = 60) -> Server:
    server = Server(model_dir, "--workers", "2", "--threads", "4", *args,
                    log_path=Path(tempfile.mkstemp(suffix=".log")[1]))
    server.wait_ready(ready_timeout)
    wait_for(lambda: len(worker_pids(server)) == 2, 30, "two workers")
    return server


def row(what: str, figure: str, baseline: str = "") -> None:
    rows.append((what, figure, baseline))
    print(f"  {what}: {figure}  {baseline}", flush=True)


def traffic(url: str, seconds: float) -> tuple[float, float, float, float]:
    """(answered share, req/s, p50 ms, p99 ms) of one normal client."""
    latencies, statuses = normal_client(url, seconds)
    return (statuses.count(200) / len(statuses), len(statuses) / seconds,
            percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000)


def slow_clients() -> None:
    print("slow clients", flush=True)
    server = start(NUMPY_LINEAR, "--header-timeout", "10")
    try:
        base = traffic(server.url(), SECONDS)
        with SlowClients(server.port, 128, "headers") as heads, \
                SlowClients(server.port, 128, "body") as bodies:
            time.sleep(1.5)
            attacked = traffic(server.url(), SECONDS)
        held = heads.opened + bodies.opened
        row("256 slow connections (128 headers, 128 bodies at 1 byte/s), normal client answered",
            f"{attacked[0]:.2%}", f"no attack: {base[0]:.2%}")
        row("  normal client p50 / p99", f"{attacked[2]:.1f} / {attacked[3]:.1f} ms",
            f"no attack: {base[2]:.1f} / {base[3]:.1f} ms (p99 × {attacked[3] / base[3]:.2f})")
        row("  normal client requests/s", f"{attacked[1]:.0f}",
            f"no attack: {base[1]:.0f} (× {attacked[1] / base[1]:.2f})")
        row("  slow connections opened / answered 408", f"{held} / "
            f"{heads.answers.get(408, 0) + bodies.answers.get(408, 0)}",
            "headers cut at 10 s, bodies at ~1.25 s; each reopened at once")
    finally:
        server.terminate()


def stuck_predictions(model: Path) -> None:
    print("stuck predictions", flush=True)
    server = start(model, "--request-timeout", "2", "--timeout", "5")
    try:
        before = set(worker_pids(server))
        with SteadyClient(server.url()) as others:
            started = time.monotonic()
            answer = requests.post(server.url(), json={"sleep": 120}, timeout=60)
            answered = time.monotonic() - started
            wait_for(lambda: len(before - set(worker_pids(server))) == 1
                     and len(worker_pids(server)) == 2, 30, "a replacement")
            recovered = time.monotonic() - started
            with ThreadPoolExecutor(8) as pool:
                started = time.monotonic()
                eight = list(pool.map(lambda _: requests.post(
                    server.url(), json={"sleep": 120}, timeout=60).status_code, range(8)))
                eight_answered = time.monotonic() - started
            time.sleep(3)
        row("predict_fn stuck (sleeps 120 s), deadline 2 s: client answered",
            f"{answer.status_code} after {answered:.2f} s", "")
        row("  stuck worker replaced (from the request's start)", f"{recovered:.2f} s",
            "model_fn not rerun (preload)")
        row("  8 stuck at once", f"{eight.count(504)} × 504 within {eight_answered:.2f} s", "")
        codes = sorted({s for s in others.statuses if s != 200}, key=str)
        row("  normal client's requests failed meanwhile", others.failed(),
            f"non-200: {codes or 'none'}")
    finally:
        server.terminate()


def bombs() -> None:
    print("memory bombs", flush=True)
    server = start(NUMPY_LINEAR)
    try:
        payloads = {"image/png": png_of_zeros(), "application/x-npz": npz_bomb()}
        for content_type, body in payloads.items():
            started = time.monotonic()
            status = requests.post(server.url(), data=body, timeout=30,
                                   headers={"Content-Type": content_type}).status_code
            elapsed = (time.monotonic() - started) * 1000
            with ThreadPoolExecutor(4) as pool:
                four = list(pool.map(lambda _: requests.post(
                    server.url(), data=body, headers={"Content-Type": content_type},
                    timeout=30).status_code, range(4)))
            name = ("PNG 7999×7999 zeros" if content_type == "image/png"
                    else "NPZ member unpacking to 1 GiB")
            row(f"{name} ({len(body) / 1024:.0f} KiB): answer", f"{status} in {elapsed:.0f} ms",
                f"4 at once: {sorted(set(four))}")
        peaks = [memory_kib(pid, "VmHWM") / 1024 for pid in worker_pids(server)]
        rss = [memory_kib(pid) / 1024 for pid in worker_pids(server)]
        row("  worker peak RSS after all bombs (VmHWM)",
            " / ".join(f"{p:.0f} MiB" for p in peaks),
            "RSS now: " + " / ".join(f"{r:.0f} MiB" for r in rss))
    finally:
        server.terminate()


def reload_without_preload(model: Path) -> None:
    print("reload", flush=True)
    (model / "load_delay.txt").write_text("8")
    (model / "loads.txt").unlink(missing_ok=True)  # counted afresh: one line a load
    server = start(model, "--no-preload", ready_timeout=120)
    try:
        wait_for(lambda: (model / "loads.txt").read_text().count("\n") == 2, 60, "two loads")
        with SteadyClient(server.url()) as others:
            time.sleep(0.5)
            os.kill(worker_pids(server)[0], signal.SIGKILL)
            wait_for(lambda: (model / "loads.txt").read_text().count("\n") == 3, 60, "reload")
            time.sleep(1)
        codes = sorted({s for s in others.statuses if s != 200}, key=str)
        row("--no-preload, a worker SIGKILLed, 8 s model_fn: requests failed",
            others.failed(), f"non-200: {codes or 'none'}")
    finally:
        server.terminate()
        (model / "load_delay.txt").unlink()


def shutdown(model: Path) -> None:
    print("shutdown", flush=True)
    server = start(model, "--timeout", "2", "--request-timeout", "60")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        requests.post(server.url(), json={"sleep": 20}, timeout=30).status_code))
    thread.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    answered = time.monotonic() - stopped
    code = server.proc.wait(30)
    row("SIGTERM, a 20 s request, 2 s grace: in-flight answer / exit status",
        f"{answers[0]} after {answered:.1f} s / {code}", "")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model_dir(Path(tmp), FAULTY_INFERENCE)
        slow_clients()
        stuck_predictions(model)
        bombs()
        reload_without_preload(model)
        shutdown(model)
    print("\n| fault | measured | baseline (same run) / notes |\n| --- | --- | --- |")
    for what, figure, baseline in rows:
        print(f"| {what} | {figure} | {baseline} |")


if __name__ == "__main__":
    main()
