"""Bidirectional streams against HTTP streaming, the same model and requests, one run.

    make bench-streams
    .venv/bin/python benchmarks/streams.py --clients 1,64 --duration 8 --rounds 3 --no-write

The word language model of examples/word-language-model (made here if it is missing)
served by ``serve --workers 2``. Each client asks for 10 words at a time, over and over
for ``--duration`` seconds, either

- on one WebSocket of its own (``/invocations-bidirectional-stream``, the model's
  ``stream_fn``: a text frame a word, then ``{"done": ...}``), as SageMaker's sidecar
  would, or
- the baseline: ``POST /invocations`` with ``"stream": true`` on a kept-alive HTTP
  connection of its own, the answer read chunk by chunk to its end.

Both kinds of client are Python threads of this process (websocket-client and requests),
so the client side costs about the same for both. The two alternate, round by round, with
1 and 64 clients; the table has medians over the rounds: answers and words a second, the
time to the first word and to the whole answer (p50, p99), and the ratio of streams to
the HTTP baseline. The table goes to stdout and BENCHMARKS.md between the ``streams``
markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import requests
import websocket

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import machine, serve, table, write_section  # noqa: E402

EXAMPLE = REPO / "examples" / "word-language-model"
WORDS = 10


def ask_stream(ws: websocket.WebSocket, seed: int) -> tuple[float, float, int]:
    """One request on an open stream: (seconds to the first word, to the end, words)."""
    started = time.perf_counter()
    ws.send(json.dumps({"seed": seed, "temperature": 1.0, "words": WORDS}))
    first, words = None, 0
    while True:
        frame = ws.recv()
        if frame.startswith("{"):
            return first or 0.0, time.perf_counter() - started, words
        words += 1
        if first is None:
            first = time.perf_counter() - started


def ask_http(session: requests.Session, url: str, seed: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    response = session.post(url, json={"seed": seed, "temperature": 1.0, "words": WORDS,
                                       "stream": True}, stream=True, timeout=60)
    first, text = None, b""
    for chunk in response.raw.stream(amt=None, decode_content=False):
        if first is None:
            first = time.perf_counter() - started
        text += chunk
    assert response.status_code == 200, response.status_code
    return first or 0.0, time.perf_counter() - started, len(text.split())


def run_clients(kind: str, port: int, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads asking for ``seconds``; what they measured, together."""
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.monotonic() + 0.5  # every client connected before the clock starts
    end_at = start_at + seconds

    def client(index: int) -> None:
        mine = []
        try:
            if kind == "websocket":
                ws = websocket.create_connection(
                    f"ws://127.0.0.1:{port}/invocations-bidirectional-stream", timeout=60)
                ask = lambda seed: ask_stream(ws, seed)  # noqa: E731
                close = ws.close
            else:
                session = requests.Session()
                url = f"http://127.0.0.1:{port}/invocations"
                ask = lambda seed: ask_http(session, url, seed)  # noqa: E731
                close = session.close
            try:
                ask(index)  # warm: the connection and the thread, outside the clock
                while time.monotonic() < start_at:
                    time.sleep(0.01)
                seed = index * 100_000
                while time.monotonic() < end_at:
                    mine.append(ask(seed))
                    seed += 1
            finally:
                close()
        except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    if errors:
        print(f"  {kind} at {clients}: {len(errors)} client(s) failed: {errors[0]}")
    firsts = sorted(r[0] for r in results)
    totals = sorted(r[1] for r in results)
    words = sum(r[2] for r in results)
    if not results:
        return {"answers": 0, "words": 0, "first50": 0, "first99": 0, "total50": 0,
                "total99": 0, "errors": len(errors)}
    return {"answers": len(results) / seconds, "words": words / seconds,
            "first50": percentile(firsts, 50) * 1000, "first99": percentile(firsts, 99) * 1000,
            "total50": percentile(totals, 50) * 1000, "total99": percentile(totals, 99) * 1000,
            "errors": len(errors)}


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", default="1,64")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if not (EXAMPLE / "model" / "model.pth").exists():
        subprocess.run([sys.executable, str(EXAMPLE / "make_model.py")], check=True)
    venv = Path(sys.executable).parent.parent
    server, url = serve("streams", EXAMPLE / "model", "--workers", "2", venv=venv,
                        logs=REPO / "build" / "bench-logs")
    port = int(url.split(":")[2].split("/")[0])
    measured: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        server.wait_until(lambda: urllib.request.urlopen(
            url.replace("/invocations", "/ping"), timeout=2).status == 200, 120)
        for round_ in range(args.rounds):
            kinds = ("websocket", "http") if round_ % 2 == 0 else ("http", "websocket")
            for clients in levels:
                for kind in kinds:
                    got = run_clients(kind, port, clients, args.duration)
                    measured.setdefault((kind, clients), []).append(got)
                    print(f"round {round_ + 1}: {kind} at {clients}: {got['answers']:.0f} "
                          f"answers/s, {got['words']:.0f} words/s, first word p50 "
                          f"{got['first50']:.1f} ms, whole p99 {got['total99']:.1f} ms",
                          flush=True)
    finally:
        server.stop()
    median = {key: {field: statistics.median(r[field] for r in runs) for field in runs[0]}
              for key, runs in measured.items()}
    rows = []
    for clients in levels:
        for kind, label in (("websocket", "WebSocket stream (stream_fn)"),
                            ("http", "HTTP chunked (/invocations, stream: true)")):
            m = median[(kind, clients)]
            ratio = (m["answers"] / median[("http", clients)]["answers"]
                     if median[("http", clients)]["answers"] else 0)
            rows.append([label, clients, f"{m['answers']:.0f}", f"{m['words']:.0f}",
                         f"{m['first50']:.1f} / {m['first99']:.1f}",
                         f"{m['total50']:.1f} / {m['total99']:.1f}",
                         f"{ratio:.2f}" if kind == "websocket" else "1.00",
                         int(m["errors"])])
    text = table(["way", "clients", "answers/s", "words/s", "first word ms p50 / p99",
                  "whole answer ms p50 / p99", "× HTTP", "failed clients"], rows)
    command = (f"`benchmarks/streams.py --clients {args.clients} --duration {args.duration:g} "
               f"--rounds {args.rounds}`")
    header = (f"Command: {command} (`make bench-streams` runs it with its defaults), "
              f"{time.strftime('%Y-%m-%d')}, medians of {args.rounds} rounds, the two ways "
              f"alternating; {WORDS} words an answer; machine: {machine()}.\n")
    print(header)
    print(text)
    if not args.no_write:
        write_section(header + "\n" + text, "streams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
