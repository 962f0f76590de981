"""The invocation path, old tree against this one (``make bench-invocation``).

    .venv/bin/python benchmarks/invocation_path.py [--old REV] [--rounds 3] [--duration 5]

``serve --workers 2`` from the tree at ``REV`` and from this tree, in the same environment,
on numpy-linear (``POST /invocations``), the peers' TorchScript MLP (64 → 256 → 256 → 10,
``/invocations``) and the same MLP in a TorchServe model archive with the peers' handler
(``POST /predictions/mlp``), wrk at 8 and 32 clients, in alternating rounds (old, new,
new, old, …) so that drift on a shared machine falls on both alike. Requests/s and the
servers' CPU ms per request are medians over rounds; the ratios are new over old.

``--in-process``: the same cases without HTTP (``benchmarks/app_cost.py``): the app called
as WSGI in one process, old and new tree in alternating child processes, CPU µs a
request. The servers' figures move by ±5 % from run to run on a shared machine; this one
by about 2 %, and it holds only what the invocation path changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

from loadgen import (  # noqa: E402
    machine,
    old_new_row,
    old_against_new,
    table,
    tree_at,
    write_section,
)

BUILD = REPO / "build" / "bench" / "invocation"
#: The tree before the invocation service (issue 41's base).
OLD_REV = "1ae4063"


def mlp_archive(mlp: Path) -> Path:
    """The MLP in a .mar as torch-model-archiver lays it out, with the peers' handler."""
    mar = BUILD / "mlp.mar"
    if not mar.exists():
        manifest = {"runtime": "python", "archiverVersion": "0.12.0",
                    "model": {"modelName": "mlp", "serializedFile": "model.pt",
                              "handler": "ts_handler.py", "modelVersion": "1.0"}}
        with zipfile.ZipFile(mar, "w") as archive:
            archive.write(mlp / "model.pt", "model.pt")
            archive.write(HERE / "peers" / "ts_handler.py", "ts_handler.py")
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return mar


def cases(only: str) -> dict[str, tuple[Path, bytes, str]]:
    """The cases measured: model, body, path."""
    from make_model import make

    mlp = BUILD / "mlp"
    if not (mlp / "model.pt").exists():
        make(str(mlp))
    body = (mlp / "payload.json").read_bytes()
    found = {"numpy-linear, /invocations": (REPO / "examples" / "numpy-linear" / "model",
                                            b"[[1.0, 2.0, 3.0]]", "/invocations"),
             "TorchScript MLP, /invocations": (mlp, body, "/invocations"),
             "MLP .mar, /predictions/mlp": (mlp_archive(mlp), body, "/predictions/mlp")}
    return {case: found[case] for case in found if only in case}


# stdlib distutils: chainer is in .venv, and serve would re-exec itself to set it.
ENVIRON = {"OMP_NUM_THREADS": "1", "SETUPTOOLS_USE_DISTUTILS": "stdlib"}


def in_process(old: Path, rounds: int, requests: int, only: str = "") -> list[list[str]]:
    """The app's CPU µs a request, old and new tree, in alternating child processes."""
    rows = []
    for case, (model_dir, payload_body, path) in cases(only).items():
        body_file = BUILD / "app-cost-body"
        body_file.write_bytes(payload_body)
        runs: dict[str, list[float]] = {"old": [], "new": []}
        for round_ in range(rounds):
            order = [("old", old), ("new", REPO)]
            for label, tree in order if round_ % 2 == 0 else reversed(order):
                out = subprocess.run(
                    [str(REPO / ".venv" / "bin" / "python"), str(HERE / "app_cost.py"),
                     str(tree), str(model_dir), path, str(body_file), str(requests)],
                    env={**__import__("os").environ, **ENVIRON}, capture_output=True,
                    text=True, check=True, cwd=BUILD)
                runs[label].append(float(out.stdout.split()[-1]))
        old_us, new_us = statistics.median(runs["old"]), statistics.median(runs["new"])
        rows.append([case, f"{old_us:.1f}", f"{new_us:.1f}", f"{old_us / new_us:.2f}",
                     ", ".join(f"{o:.0f}/{n:.0f}" for o, n in zip(runs["old"], runs["new"]))])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def servers(old: Path, rounds: int, duration: float, only: str = "") -> list[list[str]]:
    environ = ENVIRON
    rows = []
    for case, (model_dir, payload_body, path) in cases(only).items():
        results = old_against_new({"old": old, "new": REPO}, model_dir, payload_body, path,
                                  BUILD / "payload.json", rounds=rounds, duration=duration,
                                  venv=REPO / ".venv", logs=BUILD / "logs", env=environ)
        for clients in (8, 32):
            rows.append(old_new_row(case, clients, results[("old", clients)],
                                    results[("new", clients)], p50=False))
            print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD_REV, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--only", default="", help="the cases whose name holds this")
    parser.add_argument("--in-process", action="store_true",
                        help="the app alone, called as WSGI (see the module)")
    parser.add_argument("--requests", type=int, default=3000,
                        help="--in-process: requests a pass")
    args = parser.parse_args()
    (BUILD / "logs").mkdir(parents=True, exist_ok=True)
    old = Path(tree_at(args.old, BUILD))
    if args.in_process:
        rows = in_process(old, args.rounds, args.requests, args.only)
        text = (f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/"
                f"invocation_path.py --in-process --rounds {args.rounds} --requests "
                f"{args.requests}`: the app alone, called as WSGI in one process (no HTTP), "
                f"old tree `{args.old}` and this tree in alternating child processes; each "
                f"run the best of 5 passes of {args.requests} requests, CPU µs a request "
                f"(all threads); medians of {args.rounds} runs:\n\n" + table(
                    ["model, route", "old µs/req", "new µs/req", "old ÷ new",
                     "each run, old/new"], rows))
        if not args.no_write:
            write_section(text, "invocation-path-in-process")
        print(text)
        return 0
    rows = servers(old, args.rounds, args.duration, args.only)
    text = (f"Machine: {machine()}. Old: the tree at `{args.old}` (before the invocation "
            f"service); new: this tree. Command: `make bench-invocation` (`.venv/bin/python "
            f"benchmarks/invocation_path.py --rounds {args.rounds} --duration "
            f"{args.duration:g}`). Medians of {args.rounds} alternating rounds, `serve "
            f"--workers 2`, wrk with 2 threads; × and ÷ are new against old (above 1.00: "
            f"the new tree is faster, or spends less CPU a request):\n\n" + table(
                ["model, route", "clients", "old req/s", "new req/s", "req/s new × old",
                 "old p99 ms", "new p99 ms", "old CPU ms/req", "new CPU ms/req",
                 "CPU old ÷ new"], rows))
    if not args.no_write:
        write_section(text, "invocation-path")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
