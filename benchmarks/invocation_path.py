"""The invocation path, old tree against this one (``make bench-invocation``).

    .venv/bin/python benchmarks/invocation_path.py [--old REV] [--rounds 3] [--duration 5]

``serve --workers 2`` from the tree at ``REV`` and from this tree, in the same environment,
on numpy-linear (``POST /invocations``), the peers' TorchScript MLP (64 → 256 → 256 → 10,
``/invocations``) and the same MLP in a TorchServe model archive with the peers' handler
(``POST /predictions/mlp``), wrk at 8 and 32 clients, in alternating rounds (old, new,
old, new, …) so that drift on a shared machine falls on both alike. Requests/s and the
servers' CPU ms per request are medians over rounds; the ratios are new over old.
"""

from __future__ import annotations

import argparse
import json
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


def servers(old: Path, rounds: int, duration: float, only: str = "") -> list[list[str]]:
    from make_model import make

    mlp = BUILD / "mlp"
    if not (mlp / "model.pt").exists():
        make(str(mlp))
    body = (mlp / "payload.json").read_bytes()
    cases = {"numpy-linear, /invocations": (REPO / "examples" / "numpy-linear" / "model",
                                            b"[[1.0, 2.0, 3.0]]", "/invocations"),
             "TorchScript MLP, /invocations": (mlp, body, "/invocations"),
             "MLP .mar, /predictions/mlp": (mlp_archive(mlp), body, "/predictions/mlp")}
    # stdlib distutils: chainer is in .venv, and serve would re-exec itself to set it.
    environ = {"OMP_NUM_THREADS": "1", "SETUPTOOLS_USE_DISTUTILS": "stdlib"}
    rows = []
    for case, (model_dir, payload_body, path) in cases.items():
        if only not in case:
            continue
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
    args = parser.parse_args()
    (BUILD / "logs").mkdir(parents=True, exist_ok=True)
    old = Path(tree_at(args.old, BUILD))
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
