"""``make loadtest``: serve one example, load it with the locustfile, stop it, keep the report.

    python tests/load/run.py --example numpy-linear --users 8 --duration 30 --out build/loadtest

Makes the example's model when it has none, starts ``serve`` on 127.0.0.1 in its own
session, waits for ``/ping``, writes a request mix for the example (the requests its
README shows), runs locust headless for ``--duration`` seconds with ``--users`` users,
and stops every process the server started, whatever happened. locust prints its summary;
its CSV files and HTML report are written to ``<out>/<example>_*.csv`` and
``<out>/<example>.html``. Exits with locust's status: 1 when any request failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _npy(array) -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _jpeg(kind: str) -> bytes:
    sys.path.insert(0, str(REPO / "examples" / "image-classifier"))
    import random

    from shapes import draw

    out = io.BytesIO()
    draw(kind, random.Random(0)).save(out, "JPEG")
    return out.getvalue()


def write_mix(example: str, directory: Path) -> Path:
    """The requests of ``example``'s README as a locust mix file in ``directory``."""
    import numpy as np

    files: dict[str, tuple[bytes, dict]] = {}
    if example == "numpy-linear":
        files["row.json"] = (b"[[1.0, 2.0, 3.0]]", {"weight": 4})
        files["rows.npy"] = (_npy(np.arange(24, dtype=np.float64).reshape(8, 3)),
                             {"accept": "application/x-npy", "weight": 1})
    elif example == "translation":
        files["short.json"] = (b'"the man is tall"', {"weight": 1})
        files["question.json"] = (b'"where is the hotel ?"', {"weight": 1})
    elif example == "word-language-model":
        files["request.json"] = ((REPO / "examples/word-language-model/request.json")
                                 .read_bytes(), {"weight": 1})
    elif example == "seq2seq":
        files["instances.json"] = (json.dumps({"instances": [
            {"data": "i am tired"},
            {"data": "the cat is black", "configuration": {"attention_matrix": "true"}},
        ]}).encode(), {"weight": 1})
    elif example == "sentiment":
        files["sentences.npy"] = (_npy(np.array(["It is fun and easy to watch!",
                                                 "A dull film with a lazy script."])),
                                  {"accept": "application/x-npy", "weight": 1})
    elif example == "image-classifier":
        for kind in ("circle", "square", "triangle"):
            files[f"{kind}.jpg"] = (_jpeg(kind), {"weight": 1})
    else:
        raise SystemExit(f"no request mix for example {example!r}")
    directory.mkdir(parents=True, exist_ok=True)
    mix = []
    for name, (body, entry) in files.items():
        (directory / name).write_bytes(body)
        mix.append({"name": name, "payload": name, **entry})
    path = directory / "mix.json"
    path.write_text(json.dumps(mix, indent=1))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_session(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the server's process group (it leads its own session), SIGKILL past grace."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="numpy-linear")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--out", default="build/loadtest")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    example_dir = REPO / "examples" / args.example
    model_dir = example_dir / "model"
    if not example_dir.is_dir():
        raise SystemExit(f"no example {args.example!r} in {REPO / 'examples'}")
    has_model = any(p.name != "code" for p in model_dir.iterdir()) if model_dir.is_dir() else False
    if not has_model and (example_dir / "make_model.py").exists():
        subprocess.run([sys.executable, str(example_dir / "make_model.py")], check=True)

    out = Path(args.out)
    mix = write_mix(args.example, out / f"{args.example}-requests")
    port = free_port()
    serve = [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--host",
             "127.0.0.1", "--port", str(port)]
    if args.workers:
        serve += ["--workers", str(args.workers)]
    log_path = out / f"{args.example}-serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"serve exited with {server.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"serve not ready after 180 s; see {log_path}")
            time.sleep(0.2)
        report = out / args.example
        locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                  "-H", f"http://127.0.0.1:{port}", "-u", str(args.users), "-r",
                  str(args.users), "-t", f"{args.duration}s", "--stop-timeout", "10",
                  "--mix", str(mix), "--csv", str(report), "--html", f"{report}.html",
                  "--only-summary"]
        print(f"loadtest: {args.example}, {args.users} users, {args.duration} s, "
              f"serve on 127.0.0.1:{port} (log: {log_path})", flush=True)
        status = subprocess.run(locust, timeout=args.duration + 120).returncode
        print(f"loadtest: report {report}.html, CSV {report}_stats.csv; locust exit {status}")
        return status
    finally:
        stop_session(server)


if __name__ == "__main__":
    sys.exit(main())
