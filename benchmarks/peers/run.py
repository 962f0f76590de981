"""Peers benchmark: serving-toolkit against the servers users would pick instead.

    make bench-peers          (DURATION=10 seconds per level; SERVERS=a,b to pick some)
    .venv-np2/bin/python benchmarks/peers/run.py --servers flask,flask-preload,serving-toolkit \
        --rounds 3 --duration 5 --no-write       (the baselines and ours only, medians)

Every server serves the same TorchScript MLP 64→256→256→10 (``make_model.py``) with two
workers, one torch thread each, on 127.0.0.1; each answer to the same JSON row of 64
floats is first checked against the model's own output. Then, one server at a time, wrk
(2 threads) loads it at 8 and at 32 clients while the total PSS of the server's process
tree is sampled, and the server's CPU time per request is read from /proc. Each server
runs in its own session and is stopped whole (SIGTERM, then SIGKILL) whatever happens.

The servers, each in its own environment under build/peers/envs (made by the Makefile),
torch 2.13.0 everywhere:

- flask: the twenty-line Flask app (``flask_app.py``) on gunicorn gthread, 2 workers × 4
  threads: the baseline every speed ratio is taken against.
- flask-preload: the same with ``--preload`` (the model loaded once in the master, as ours
  is): the baseline of the memory ratio.
- serving-toolkit: ``serve`` with its defaults (2 workers).
- torchserve: TorchServe 0.12 with a small handler (``ts_handler.py``).
- sagemaker-pytorch: the SageMaker PyTorch inference toolkit 2.0.25, its own ``serve``
  entry point (TorchServe underneath) and its default handler. It writes
  /etc/sagemaker-ts.properties, as it does in its container.
- mms: the SageMaker inference toolkit 1.10.1 on Multi Model Server 1.1.11
  (``mms_service.py``). It writes /etc/sagemaker-mms.properties, and listens on 0.0.0.0
  (the toolkit writes that address, and MMS takes no override from the environment); the
  benchmark talks to it on 127.0.0.1 only.
- litserve: LitServe 0.2.19 (``litserve_app.py``), 2 workers.

The table goes to stdout, build/peers/results.json, and BENCHMARKS.md between the
``peers`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from loadgen import (  # noqa: E402
    ServerProcess,
    answers_like,
    free_port,
    machine,
    measure,
    table,
    write_section,
)

BUILD = REPO / "build" / "peers"
ENVS = BUILD / "envs"
MODEL = BUILD / "model"
WORKERS = 2


def env_with(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a server in ``venv``: its bin first on PATH (the JVM servers start
    Python workers by name), one torch thread, no settings of ours leaking in."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("SERVING_", "SAGEMAKER_", "SM_", "TS_", "MMS_"))}
    environ.update(PATH=f"{venv / 'bin'}:{environ.get('PATH', '')}", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", **extra)
    return environ


@dataclasses.dataclass
class Peer:
    name: str
    label: str
    venv: Path
    #: Makes the server's files in its run directory; returns (argv, env, path to POST).
    prepare: t.Callable[[Path, int], tuple[list[str], dict[str, str], str]]
    ready_timeout: float = 120


def prepare_flask(run: Path, port: int):
    venv = REPO / ".venv-np2"
    return ([str(venv / "bin" / "gunicorn"), "-k", "gthread", "-w", str(WORKERS), "--threads",
             "4", "-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "flask_app:app"],
            env_with(venv, MODEL_PATH=str(MODEL / "model.pt")), "/invocations")


def prepare_flask_preload(run: Path, port: int):
    """The same app with ``--preload``: the model loaded once in the master, the workers
    sharing it copy-on-write, as ours does. The memory baseline (the plain one loads the
    model in each worker, and costs a third more)."""
    argv, env, path = prepare_flask(run, port)
    return [argv[0], "--preload", *argv[1:]], env, path


def prepare_ours(run: Path, port: int):
    venv = REPO / ".venv-np2"
    return ([str(venv / "bin" / "serve"), "--model-dir", str(MODEL), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(WORKERS)],
            env_with(venv), "/invocations")


def prepare_torchserve(run: Path, port: int):
    venv = ENVS / "torchserve"
    store = run / "store"
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(venv / "bin" / "torch-model-archiver"), "--model-name", "mlp",
                    "--version", "1.0", "--serialized-file", str(MODEL / "model.pt"),
                    "--handler", str(HERE / "ts_handler.py"), "--export-path", str(store),
                    "--force"], check=True, env=env_with(venv))
    config = run / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{port}\n"
        f"management_address=http://127.0.0.1:{free_port()}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\n"
        f"default_workers_per_model={WORKERS}\n"
        "disable_token_authorization=true\n"
        "install_py_dep_per_model=false\n")
    return ([str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
             "--model-store", str(store), "--models", "mlp=mlp.mar", "--ts-config",
             str(config), "--disable-token-auth"],
            env_with(venv, LOG_LOCATION=str(run / "logs"), METRICS_LOCATION=str(run / "logs")),
            "/predictions/mlp")


def _sagemaker_model_dir(run: Path) -> Path:
    model_dir = run / "ml" / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL / "model.pt", model_dir / "model.pt")
    return run / "ml"


def prepare_sagemaker_pytorch(run: Path, port: int):
    venv = ENVS / "sagemaker-pytorch"
    base = _sagemaker_model_dir(run)
    return ([str(venv / "bin" / "serve")],
            env_with(venv, SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(port),
                     SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
                     # TorchServe reads TS_* over its config file: keep it off 0.0.0.0.
                     TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{port}",
                     TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{free_port()}",
                     TS_METRICS_ADDRESS=f"http://127.0.0.1:{free_port()}",
                     LOG_LOCATION=str(run / "logs"), METRICS_LOCATION=str(run / "logs")),
            "/invocations")


def prepare_mms(run: Path, port: int):
    venv = ENVS / "mms"
    base = _sagemaker_model_dir(run)
    return ([str(venv / "bin" / "python"), str(HERE / "mms_service.py")],
            env_with(venv, SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(port),
                     SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS), PYTHONPATH=str(HERE),
                     LOG_LOCATION=str(run / "logs"), METRICS_LOCATION=str(run / "logs")),
            "/invocations")


def prepare_litserve(run: Path, port: int):
    venv = ENVS / "litserve"
    return ([str(venv / "bin" / "python"), str(HERE / "litserve_app.py"), str(port)],
            env_with(venv, MODEL_PATH=str(MODEL / "model.pt")), "/predict")


PEERS = [
    Peer("flask", "hand-written Flask + TorchScript, gunicorn gthread 2×4", REPO / ".venv-np2",
         prepare_flask),
    Peer("flask-preload", "the same Flask app, `--preload`", REPO / ".venv-np2",
         prepare_flask_preload),
    Peer("serving-toolkit", "**serving-toolkit** (defaults, 2 workers)", REPO / ".venv-np2",
         prepare_ours),
    Peer("torchserve", "TorchServe 0.12", ENVS / "torchserve", prepare_torchserve, 240),
    Peer("sagemaker-pytorch", "SageMaker PyTorch inference toolkit 2.0.25 (TorchServe)",
         ENVS / "sagemaker-pytorch", prepare_sagemaker_pytorch, 240),
    Peer("mms", "SageMaker inference toolkit 1.10.1 on Multi Model Server 1.1.11",
         ENVS / "mms", prepare_mms, 240),
    Peer("litserve", "LitServe 0.2.19", ENVS / "litserve", prepare_litserve),
]


def bench(peer: Peer, duration: float, levels: t.Sequence[int]) -> dict[str, t.Any]:
    run = BUILD / "run" / peer.name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    port = free_port()
    argv, env, path = peer.prepare(run, port)
    url = f"http://127.0.0.1:{port}{path}"
    body = (MODEL / "payload.json").read_bytes()
    expected = json.loads((MODEL / "expected.json").read_text())
    server = ServerProcess(peer.name, argv, env=env, cwd=str(run),
                           log_path=str(BUILD / "logs" / f"{peer.name}.log"))
    result: dict[str, t.Any] = {"name": peer.name, "label": peer.label}
    try:
        ready = server.wait_until(lambda: answers_like(url, body, expected), peer.ready_timeout)
        result["ready_seconds"] = round(ready, 1)
        time.sleep(1)  # let start-up work (JIT, worker spawns) settle
        measure(server, url, str(MODEL / "payload.json"), 8, 5)  # warm-up, not reported
        for clients in levels:
            load = measure(server, url, str(MODEL / "payload.json"), clients, duration)
            result[str(clients)] = dataclasses.asdict(load)
            print(f"  {peer.name}: {clients} clients: {load.rps:.0f} req/s, p99 "
                  f"{load.p99_ms:.1f} ms, PSS {load.pss_mib:.0f} MiB, CPU {load.cpu_ms:.2f} "
                  f"ms/request, {load.errors} errors", flush=True)
    except Exception as exc:  # one server failing must not stop the others
        result["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        print(f"  {peer.name}: FAILED: {result['error']}", flush=True)
    finally:
        server.stop()
    return result


def medians(rounds: list[dict[str, t.Any]], levels: t.Sequence[int]) -> dict[str, t.Any]:
    """One server's rounds as one result: the median of each figure over the rounds it
    finished; failed if every round failed."""
    done = [r for r in rounds if "error" not in r]
    if not done:
        return rounds[-1]
    result = {k: v for k, v in done[0].items() if k not in map(str, levels)}
    result["ready_seconds"] = statistics.median(r["ready_seconds"] for r in done)
    result["rounds"] = len(done)
    for c in map(str, levels):
        result[c] = {k: statistics.median(r[c][k] for r in done) for k in done[0][c]}
    return result


def render(results: list[dict[str, t.Any]], levels: t.Sequence[int]) -> str:
    base = next((r for r in results if r["name"] == "flask" and "error" not in r), None)
    preloaded = next((r for r in results if r["name"] == "flask-preload" and "error" not in r),
                     None)
    ours = next((r for r in results if r["name"] == "serving-toolkit" and "error" not in r),
                None)
    header = ["server"]
    for c in levels:
        header += [f"req/s at {c}", f"p99 ms at {c}"]
    header += ["× Flask at " + "/".join(map(str, levels)),
               "ours × it at " + "/".join(map(str, levels)),
               "CPU ms/request at " + str(levels[-1]), "PSS MiB (peak)",
               "PSS × preloaded Flask"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["label"], *(["failed"] * (len(header) - 1))])
            continue
        row = [r["label"]]
        for c in levels:
            row += [f"{r[str(c)]['rps']:.0f}", f"{r[str(c)]['p99_ms']:.1f}"]
        row.append(" / ".join(f"{r[str(c)]['rps'] / base[str(c)]['rps']:.2f}" for c in levels)
                   if base else "")
        row.append(" / ".join(f"{ours[str(c)]['rps'] / r[str(c)]['rps']:.2f}" for c in levels)
                   if ours and r is not ours else "")
        row.append(f"{r[str(levels[-1])]['cpu_ms']:.2f}")
        peak = max(r[str(c)]['pss_mib'] for c in levels)
        row.append(f"{peak:.0f}")
        row.append(f"{peak / max(preloaded[str(c)]['pss_mib'] for c in levels):.2f}"
                   if preloaded else "")
        rows.append(row)
    return table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="peers benchmark")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--servers", default=",".join(p.name for p in PEERS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds over the servers, the order turned round every other "
                             "round; each figure is the median over rounds")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    levels = (8, 32)
    names = args.servers.split(",")
    sys.path.insert(0, str(HERE))
    from make_model import make

    make(str(MODEL))
    chosen = []
    for peer in PEERS:
        if peer.name not in names:
            continue
        if not (peer.venv / "bin" / "python").exists():
            print(f"  {peer.name}: skipped, no environment at {peer.venv} (make bench-peers "
                  f"makes it)")
            continue
        chosen.append(peer)
    rounds: dict[str, list[dict[str, t.Any]]] = {peer.name: [] for peer in chosen}
    for turn in range(args.rounds):
        # Drift on a shared machine then falls on every server alike.
        for peer in chosen if turn % 2 == 0 else chosen[::-1]:
            print(f"{peer.name} (round {turn + 1} of {args.rounds}):", flush=True)
            rounds[peer.name].append(bench(peer, args.duration, levels))
    results = [medians(rounds[peer.name], levels) for peer in chosen]
    (BUILD / "results.json").write_text(json.dumps(results, indent=1))
    markdown = render(results, levels)
    print(markdown)
    if not args.no_write:
        write_section(
            f"Command: `make bench-peers` (`benchmarks/peers/run.py --duration "
            f"{args.duration:g} --rounds {args.rounds}`), {time.strftime('%Y-%m-%d')}, "
            f"{'one run' if args.rounds == 1 else f'medians of {args.rounds} rounds'}, "
            f"servers one after another"
            f"{'' if args.rounds == 1 else ', the order turned round every other round'}; "
            f"machine: {machine()}. wrk -t2, {args.duration:g} s per level; "
            f"req/s and p99 from wrk; CPU: the server's process tree's CPU time per request; "
            f"PSS: the tree's total, peak of samples every 0.5 s.\n\n{markdown}", "peers")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
