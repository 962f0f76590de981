"""Our own load benchmarks (part of ``make bench``): overhead, batching, cold start, memory.

    .venv-np2/bin/python benchmarks/load.py [--duration 8] [--no-write]

Every figure is measured against a baseline in the same run, servers on 127.0.0.1, load
from wrk (2 threads); each server is its own session, stopped whole afterwards.

1. Overhead: ``serve`` with an echo model (``predict_fn`` returns its input: decoding and
   encoding are paid, the model is free) against a bare Flask echo app on the same
   gunicorn settings (gthread, 2 workers × 4 threads), with a 1 KB JSON body and a 1 MB
   NPY body, at 8 clients.
2. Batching: numpy-linear and three TorchScript MLPs (the peers' 2 × 256, 2 × 2048,
   4 × 2048), batching off against ``--max-batch-size 16``, at 1, 8 and 32 clients (with
   ``--old REV``, also batching on from the tree at REV, in the same turns); medians of
   ``--rounds`` alternating rounds (3).
3. Cold start: from ``serve`` to the first 200 of /invocations for the peers' TorchScript
   MLP, against that model's own load time (``import torch`` and ``torch.jit.load`` in a
   fresh interpreter).
4. Memory: total PSS of ``serve`` and its workers with 1, 2 and 4 workers, after 200
   requests each.
5. Observability: the echo model with a 1 KB JSON body at 8 clients, ``--no-metrics``
   against metrics on (the default), and metrics on with ``--log-format json``; two
   alternating rounds, so that drift on a shared machine falls on every server alike.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import numpy as np

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
    pss_kib,
    serve_tree,
    table,
    tree_at,
    write_section,
)
from loadgen import serve as loadgen_serve  # noqa: E402
from make_model import make  # noqa: E402

VENV = REPO / ".venv-np2"
BUILD = REPO / "build" / "bench"

ECHO_INFERENCE = """
    def model_fn(model_dir):
        return None


    def predict_fn(data, model):
        return data
"""

FLASK_ECHO = """
    import flask

    app = flask.Flask(__name__)


    @app.post("/invocations")
    def invocations():
        return flask.Response(flask.request.get_data(),
                              content_type=flask.request.content_type)
"""


def serve(name: str, model_dir: Path, *args: str) -> tuple[ServerProcess, str]:
    return loadgen_serve(name, model_dir, *args, venv=VENV, logs=BUILD / "logs")


def ready(server: ServerProcess, url: str, body: bytes, content_type: str = "application/json",
          timeout: float = 120) -> float:
    return server.wait_until(lambda: post(url, body, content_type)[0] == 200, timeout)


def overhead(duration: float) -> str:
    model_dir = BUILD / "echo" / "model"
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(ECHO_INFERENCE))
    app_dir = BUILD / "flask-echo"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "echo_app.py").write_text(textwrap.dedent(FLASK_ECHO))
    bodies = {
        "1 KB JSON": (BUILD / "echo" / "1k.json", "application/json",
                      json.dumps([[round(x, 6) for x in np.random.default_rng(0).random(60)]])
                      .encode()),
        "1 MB NPY": (BUILD / "echo" / "1m.npy", "application/x-npy", None),
    }
    out = io.BytesIO()
    np.save(out, np.random.default_rng(0).random((512, 512)).astype(np.float32))  # 1 MiB
    bodies["1 MB NPY"] = (bodies["1 MB NPY"][0], "application/x-npy", out.getvalue())
    for path, _, body in bodies.values():
        path.write_bytes(body)

    rows = []
    ours, ours_url = serve("echo-serve", model_dir, "--workers", "2", "--threads", "4")
    port = free_port()
    flask = ServerProcess("echo-flask", [str(VENV / "bin" / "gunicorn"), "-k", "gthread", "-w",
                                         "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
                                         "--chdir", str(app_dir), "echo_app:app"],
                          log_path=str(BUILD / "logs" / "echo-flask.log"))
    flask_url = f"http://127.0.0.1:{port}/invocations"
    try:
        for what, (path, content_type, body) in bodies.items():
            ready(ours, ours_url, body, content_type)
            ready(flask, flask_url, body, content_type)
            # Both answer with the same bytes' meaning: the echo is faithful.
            results = {}
            for name, server, url in (("flask", flask, flask_url), ("ours", ours, ours_url)):
                measure(server, url, str(path), 8, 1, content_type=content_type,
                        accept=content_type)
                results[name] = measure(server, url, str(path), 8, duration,
                                        content_type=content_type, accept=content_type)
            f, o = results["flask"], results["ours"]
            rows.append([what, f"{f.rps:.0f}", f"{o.rps:.0f}", f"{o.rps / f.rps:.2f}",
                         f"{f.p50_ms:.2f} / {f.p99_ms:.1f}", f"{o.p50_ms:.2f} / {o.p99_ms:.1f}",
                         f"{f.cpu_ms:.3f}", f"{o.cpu_ms:.3f}", f"{o.errors + f.errors}"])
            print(f"  overhead {what}: flask {f.rps:.0f} req/s, ours {o.rps:.0f}", flush=True)
    finally:
        ours.stop()
        flask.stop()
    return table(["body, 8 clients", "bare Flask req/s", "serve req/s", "serve × Flask",
                  "Flask p50 / p99 ms", "serve p50 / p99 ms", "Flask CPU ms/req",
                  "serve CPU ms/req", "errors"], rows)


#: The batching benchmark's models: name → (MLP width, hidden layers), or None: the example.
BATCHING_MODELS = {
    "numpy-linear (predict_fn not @batched)": None,
    "peers' MLP 64 → 2 × 256 → 10": (256, 2),
    "MLP 64 → 2 × 2048 → 10": (2048, 2),
    "MLP 64 → 4 × 2048 → 10": (2048, 4),
}
BATCH_SIZE = "16"


def batching(duration: float, old: str | None, rounds: int = 3,
             models: t.Sequence[str] | None = None) -> str:
    """Batching off against on (``--max-batch-size 16``, the default 5 ms delay), and on
    from the tree at ``old`` when given, on each model at 1, 8 and 32 clients.

    The servers of one model take turns within each of ``rounds`` rounds (the order turned
    round every other round), and each figure is the median over rounds: on a shared
    2-core machine one round of the same code has differed by up to 2.5 x, so a single
    round says nothing about a 5 % promise."""
    rows = []
    for model_name, shape in BATCHING_MODELS.items():
        if models and not any(m.lower() in model_name.lower().replace("×", "x")
                              for m in models):
            continue
        if shape is None:
            model_dir = REPO / "examples" / "numpy-linear" / "model"
            body, expected = b"[[1.0, 2.0, 3.0]]", None
        else:
            model_dir = BUILD / f"mlp-{shape[1]}x{shape[0]}"
            make(str(model_dir), width=shape[0], hidden=shape[1])
            body = (model_dir / "payload.json").read_bytes()
            expected = json.loads((model_dir / "expected.json").read_text())
        payload = BUILD / "batching-payload.json"
        payload.write_bytes(body)
        tag = re.sub(r"[^a-z0-9]+", "-", model_name.lower())[:24]
        servers = {"off": serve(f"batch-off-{tag}", model_dir, "--workers", "2"),
                   "on": serve(f"batch-on-{tag}", model_dir, "--workers", "2",
                               "--max-batch-size", BATCH_SIZE)}
        if old:
            servers["old on"] = serve_tree(f"batch-old-{tag}", tree_at(old, BUILD), model_dir,
                                           "--workers", "2", "--max-batch-size", BATCH_SIZE,
                                           venv=VENV, logs=BUILD / "logs")
        results: dict[tuple[str, int], list[t.Any]] = {}
        try:
            for server, url in servers.values():
                server.wait_until(lambda: answers_like(url, body, expected) if expected
                                  else post(url, body)[0] == 200, 120)
            for round_ in range(rounds):
                order = list(servers.items())
                if round_ % 2:
                    order.reverse()
                for clients in (1, 8, 32):
                    for name, (server, url) in order:
                        measure(server, url, str(payload), clients, 1)
                        load = measure(server, url, str(payload), clients, duration)
                        results.setdefault((name, clients), []).append(load)
                        print(f"  batching {model_name}, round {round_ + 1}, {name}, "
                              f"{clients} clients: {load.rps:.0f} req/s, "
                              f"p99 {load.p99_ms:.1f} ms", flush=True)
        finally:
            for server, _ in servers.values():
                server.stop()

        def med(name: str, clients: int, field: str) -> float:
            return statistics.median(getattr(r, field) for r in results[name, clients])

        for clients in (1, 8, 32):
            off, on = med("off", clients, "rps"), med("on", clients, "rps")
            row = [model_name, str(clients), f"{off:.0f}", f"{on:.0f}", f"{on / off:.2f}",
                   f"{med('off', clients, 'p99_ms'):.1f}", f"{med('on', clients, 'p99_ms'):.1f}"]
            if old:
                was = med("old on", clients, "rps")
                row[5:5] = [f"{was:.0f}", f"{was / off:.2f}"]
                row.append(f"{med('old on', clients, 'p99_ms'):.1f}")
            row.append(str(sum(r.errors for (_, c), runs in results.items() if c == clients
                               for r in runs)))
            rows.append(row)
            print("  " + " | ".join(row), flush=True)
    header = ["model", "clients", "off req/s", "on req/s", "on × off"]
    if old:
        header += [f"old on req/s ({old})", "old on × off"]
    header += ["off p99 ms", "on p99 ms"] + (["old on p99 ms"] if old else []) + ["errors"]
    return table(header, rows)


def cold_start() -> str:
    model_dir = BUILD / "mlp"
    make(str(model_dir))
    body = (model_dir / "payload.json").read_bytes()
    expected = json.loads((model_dir / "expected.json").read_text())
    code = ("import time; t = time.perf_counter(); import torch; "
            f"m = torch.jit.load({str(model_dir / 'model.pt')!r}); "
            "print(time.perf_counter() - t)")
    rows = []
    for attempt in range(3):
        load = float(subprocess.run([str(VENV / "bin" / "python"), "-c", code],
                                    capture_output=True, text=True, check=True).stdout)
        server, url = serve(f"cold-{attempt}", model_dir, "--workers", "2")
        try:
            first = server.wait_until(lambda: answers_like(url, body, expected), 120)
        finally:
            server.stop()
        rows.append([str(attempt + 1), f"{load:.2f}", f"{first:.2f}", f"{first - load:.2f}"])
        print(f"  cold start {attempt + 1}: load {load:.2f} s, first 200 {first:.2f} s",
              flush=True)
    return table(["run", "import torch + jit.load, s", "serve → first 200, s",
                  "serve's own, s"], rows)


def memory() -> str:
    model_dir = BUILD / "mlp"
    make(str(model_dir))
    body = (model_dir / "payload.json").read_bytes()
    rows = []
    for workers in (1, 2, 4):
        server, url = serve(f"pss-{workers}", model_dir, "--workers", str(workers))
        try:
            ready(server, url, body)
            for _ in range(200):
                post(url, body)
            time.sleep(1)
            pids = server.pids()
            rows.append([str(workers), str(len(pids)), f"{pss_kib(pids) / 1024:.0f}"])
        finally:
            server.stop()
        print(f"  memory, {workers} workers: {rows[-1][2]} MiB", flush=True)
    return table(["workers", "processes", "PSS MiB (total)"], rows)


def observability(duration: float) -> str:
    model_dir = BUILD / "echo" / "model"
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(ECHO_INFERENCE))
    payload = BUILD / "echo" / "1k.json"
    payload.write_bytes(json.dumps([[round(x, 6) for x in np.random.default_rng(0).random(60)]])
                        .encode())
    body = payload.read_bytes()
    flags = {"metrics off": ["--no-metrics"], "metrics on": [],
             "metrics on, JSON logs": ["--log-format", "json"]}
    servers = {name: serve(f"obs-{i}", model_dir, "--workers", "2", "--threads", "4", *extra)
               for i, (name, extra) in enumerate(flags.items())}
    runs: dict[str, list[t.Any]] = {name: [] for name in flags}
    try:
        for server, url in servers.values():
            ready(server, url, body)
        for round_ in range(2):
            for name, (server, url) in servers.items():
                measure(server, url, str(payload), 8, 1)
                runs[name].append(measure(server, url, str(payload), 8, duration))
                print(f"  observability round {round_ + 1}, {name}: "
                      f"{runs[name][-1].rps:.0f} req/s", flush=True)
    finally:
        for server, _ in servers.values():
            server.stop()
    base = sum(r.rps for r in runs["metrics off"]) / 2
    rows = []
    for name, results in runs.items():
        rps = sum(r.rps for r in results) / 2
        rows.append([name, " / ".join(f"{r.rps:.0f}" for r in results), f"{rps:.0f}",
                     f"{rps / base:.2f}", " / ".join(f"{r.p99_ms:.1f}" for r in results),
                     f"{sum(r.cpu_ms for r in results) / 2:.3f}",
                     f"{sum(r.errors for r in results)}"])
    return table(["echo, 1 KB JSON, 8 clients", "req/s (round 1 / 2)", "mean req/s",
                  "× metrics off", "p99 ms (round 1 / 2)", "CPU ms/req", "errors"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="our load benchmarks")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--only", default="overhead,batching,cold,memory,observability")
    parser.add_argument("--old", default=None, metavar="REV",
                        help="batching: also measure batching on from the tree at this commit")
    parser.add_argument("--rounds", type=int, default=3,
                        help="batching: alternating rounds; figures are medians over them")
    parser.add_argument("--models", default=None,
                        help="batching: only the models whose names contain one of these "
                             "(comma-separated), e.g. 'peers,4 x 2048'")
    args = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    parts = {"overhead": lambda: overhead(args.duration),
             "batching": lambda: batching(args.duration, args.old, args.rounds,
                                           args.models.split(",") if args.models else None),
             "cold": cold_start, "memory": memory,
             "observability": lambda: observability(args.duration)}
    for name in args.only.split(","):
        print(f"{name}:", flush=True)
        markdown = parts[name]()
        print(markdown, flush=True)
        if not args.no_write:
            runs = f"medians of {args.rounds} rounds" if name == "batching" else "one run"
            write_section(f"Command: `make bench` (`benchmarks/load.py`), "
                          f"{time.strftime('%Y-%m-%d')}, {runs}; machine: {machine()}.\n\n"
                          f"{markdown}", f"load-{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
