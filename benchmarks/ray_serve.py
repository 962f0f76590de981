"""The Ray engine against the gunicorn one: same model, same load, same machine.

    .venv-ray/bin/python benchmarks/ray_serve.py [--duration 8] [--no-write]   (make bench-ray)

Both servers come from .venv-ray (the same torch, the same code): ``serve --workers 2``
against ``serve --engine ray --ray-replicas 2 --ray-num-cpus 1``, each in its own session,
on 127.0.0.1. Two models: the peers' TorchScript MLP (64 → 256 → 256 → 10, one JSON row) and
the numpy-linear example (one JSON row), at 8 and 32 clients from wrk (2 threads), a 1 s
warm-up before each measured run (3 s: a Ray proxy just started
answers its first requests slowly). A bare Ray Serve deployment that echoes the body
(``ray_echo_app.py``: no model, none of our code, the same replicas) shows what Ray itself
costs here. Writes the table into BENCHMARKS.md (section ``ray-serve``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

from loadgen import (  # noqa: E402
    ServerProcess,
    answers_like,
    free_port,
    machine,
    measure,
    post,
    serve as loadgen_serve,
    table,
    write_section,
)
from make_model import make  # noqa: E402

VENV = REPO / ".venv-ray"
BUILD = REPO / "build" / "bench-ray"


def serve(name: str, model_dir: Path, *args: str) -> tuple[ServerProcess, str]:
    return loadgen_serve(name, model_dir, *args, venv=VENV, logs=BUILD / "logs")


def models() -> dict[str, tuple[Path, Path, object]]:
    """name: (model directory, payload file, expected answer)."""
    mlp = BUILD / "mlp"
    make(str(mlp))
    linear = REPO / "examples" / "numpy-linear" / "model"
    payload = BUILD / "linear.json"
    payload.write_text("[[0.5, -1.25, 2.0]]")
    return {
        "TorchScript MLP 64→256→256→10": (mlp, mlp / "payload.json",
                                          json.loads((mlp / "expected.json").read_text())),
        "numpy-linear": (linear, payload, None),
    }


def compare(duration: float) -> str:
    rows = []
    for model, (model_dir, payload, expected) in models().items():
        body = payload.read_bytes()
        servers = {
            "gunicorn": serve("gunicorn", model_dir, "--workers", "2"),
            "ray": serve("ray", model_dir, "--engine", "ray", "--ray-replicas", "2",
                         "--ray-num-cpus", "1"),
        }
        results = {}
        try:
            for server, url in servers.values():
                if expected is not None:
                    server.wait_until(lambda: answers_like(url, body, expected), 240)
                else:
                    server.wait_until(lambda: post(url, body)[0] == 200, 240)
            for clients in (8, 32):
                for name, (server, url) in servers.items():
                    measure(server, url, str(payload), clients, 3)
                    results[name, clients] = measure(server, url, str(payload), clients,
                                                     duration)
                    load = results[name, clients]
                    print(f"  {model}, {name}, {clients} clients: {load.rps:.0f} req/s, "
                          f"p99 {load.p99_ms:.1f} ms", flush=True)
        finally:
            for server, _ in servers.values():
                server.stop(grace=30)
        for clients in (8, 32):
            g, r = results["gunicorn", clients], results["ray", clients]
            rows.append([model, str(clients), f"{g.rps:.0f}", f"{r.rps:.0f}",
                         f"{r.rps / g.rps:.2f}", f"{g.p50_ms:.1f} / {g.p99_ms:.1f}",
                         f"{r.p50_ms:.1f} / {r.p99_ms:.1f}", f"{g.pss_mib:.0f}",
                         f"{r.pss_mib:.0f}", f"{g.errors + r.errors}"])
    rows += bare_ray(duration)
    return table(["model", "clients", "gunicorn req/s", "Ray Serve req/s", "Ray × gunicorn",
                  "gunicorn p50 / p99 ms", "Ray p50 / p99 ms", "gunicorn PSS MiB",
                  "Ray PSS MiB", "errors"], rows)


def bare_ray(duration: float) -> list[list[str]]:
    """Rows for the bare Ray Serve echo (its gunicorn columns empty)."""
    port = free_port()
    server = ServerProcess("ray-echo", [str(VENV / "bin" / "python"), str(HERE / "ray_echo_app.py"),
                                        str(port)], log_path=str(BUILD / "logs" / "ray-echo.log"))
    url = f"http://127.0.0.1:{port}/invocations"
    payload = BUILD / "linear.json"
    rows = []
    try:
        server.wait_until(lambda: post(url, payload.read_bytes())[0] == 200, 240)
        for clients in (8, 32):
            measure(server, url, str(payload), clients, 3)
            load = measure(server, url, str(payload), clients, duration)
            print(f"  bare Ray Serve echo, {clients} clients: {load.rps:.0f} req/s, "
                  f"p99 {load.p99_ms:.1f} ms", flush=True)
            rows.append(["bare Ray Serve echo (no model, not our code)", str(clients), "",
                         f"{load.rps:.0f}", "", "", f"{load.p50_ms:.1f} / {load.p99_ms:.1f}",
                         "", f"{load.pss_mib:.0f}", f"{load.errors}"])
    finally:
        server.stop(grace=30)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Ray Serve against gunicorn")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    markdown = compare(args.duration)
    print(markdown, flush=True)
    if not args.no_write:
        write_section(f"Command: `make bench-ray` (`benchmarks/ray_serve.py --duration "
                      f"{args.duration:g}`), {time.strftime('%Y-%m-%d')}, one run; machine: "
                      f"{machine()}.\n\n{markdown}", "ray-serve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
