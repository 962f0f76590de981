"""TorchServe against serving-toolkit on the same model archive.

    make bench-torchserve      (.venv/bin/python benchmarks/torchserve_mar.py)

The peers benchmark's MLP (TorchScript 64→256→256→10, ``peers/make_model.py``) in one
``.mar`` that TorchServe 0.12's own ``torch-model-archiver`` builds with the peers'
handler (``peers/ts_handler.py``, a BaseHandler subclass). TorchServe serves it with
``--model-store``; so do we (``serve --model-store STORE --models mlp=mlp.mar``), both
with 2 workers and one torch thread each, at ``/predictions/mlp``. Each server's answer
is checked against the model's own output first; then wrk loads it at 8 and 32 clients
while the PSS of its process tree is sampled. Cold start: from starting the process to
its first right answer. Rounds alternate the order; figures are medians.

Writes the table to stdout and BENCHMARKS.md between the ``torchserve-mar`` markers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

import run as peers  # noqa: E402  (benchmarks/peers/run.py)
from loadgen import machine, table, write_section  # noqa: E402

OURS = peers.REPO / ".venv"  # the environment with the torchserve extra


def prepare_ours(run: Path, port: int):
    argv, _, path = peers.prepare_torchserve(run, port)  # builds the store's mlp.mar
    store = run / "store"
    return ([str(OURS / "bin" / "serve"), "--model-store", str(store), "--models",
             "mlp=mlp.mar", "--host", "127.0.0.1", "--port", str(port), "--workers",
             str(peers.WORKERS), "--disable-token-auth"],  # as TorchServe is run
            peers.env_with(OURS, SETUPTOOLS_USE_DISTUTILS="stdlib"), path)


SERVERS = [
    peers.Peer("torchserve", "TorchServe 0.12", peers.ENVS / "torchserve",
               peers.prepare_torchserve, 240),
    peers.Peer("serving-toolkit", "serving-toolkit (same .mar)", OURS, prepare_ours, 120),
]


def render(results, levels) -> str:
    theirs, ours = results
    header = ["server"]
    for c in levels:
        header += [f"req/s at {c}", f"p99 ms at {c}"]
    header += ["PSS MiB (peak)", "cold start s", "CPU ms/request at " + str(levels[-1])]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["label"], *(["failed"] * (len(header) - 1))])
            continue
        row = [r["label"]]
        for c in levels:
            row += [f"{r[str(c)]['rps']:.0f}", f"{r[str(c)]['p99_ms']:.1f}"]
        row += [f"{max(r[str(c)]['pss_mib'] for c in levels):.0f}", f"{r['ready_seconds']:.1f}",
                f"{r[str(levels[-1])]['cpu_ms']:.2f}"]
        rows.append(row)
    if "error" not in theirs and "error" not in ours:
        row = ["ours ÷ TorchServe"]
        for c in levels:
            row += [f"{ours[str(c)]['rps'] / theirs[str(c)]['rps']:.2f} ×",
                    f"{ours[str(c)]['p99_ms'] / theirs[str(c)]['p99_ms']:.2f} ×"]
        pss = [max(r[str(c)]["pss_mib"] for c in levels) for r in (ours, theirs)]
        row += [f"{pss[0] / pss[1]:.2f} ×", f"{ours['ready_seconds'] / theirs['ready_seconds']:.2f} ×",
                f"{ours[str(levels[-1])]['cpu_ms'] / theirs[str(levels[-1])]['cpu_ms']:.2f} ×"]
        rows.append(row)
    return table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="TorchServe against us on one .mar")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    levels = (8, 32)
    from make_model import make

    make(str(peers.MODEL))
    for server in SERVERS:
        if not (server.venv / "bin" / "python").exists():
            print(f"no environment at {server.venv}: make bench-torchserve makes it")
            return 2
    rounds = {s.name: [] for s in SERVERS}
    for turn in range(args.rounds):
        for server in SERVERS if turn % 2 == 0 else SERVERS[::-1]:
            print(f"{server.name} (round {turn + 1} of {args.rounds}):", flush=True)
            rounds[server.name].append(peers.bench(server, args.duration, levels))
    results = [peers.medians(rounds[s.name], levels) for s in SERVERS]
    markdown = render(results, levels)
    print(markdown)
    if not args.no_write:
        write_section(
            f"Command: `make bench-torchserve` (`benchmarks/torchserve_mar.py --duration "
            f"{args.duration:g} --rounds {args.rounds}`), {time.strftime('%Y-%m-%d')}, "
            f"medians of {args.rounds} rounds, the order turned round every other round; "
            f"machine: {machine()}. Both serve the same mlp.mar (TorchServe's archiver, the "
            f"peers' BaseHandler subclass), 2 workers, one torch thread each; wrk -t2, "
            f"{args.duration:g} s per level; PSS: the process tree's total, peak; cold start: "
            f"process start to the first right answer.\n\n{markdown}", "torchserve-mar")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
