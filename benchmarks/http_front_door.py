"""The worker's HTTP/1.1 front door, old against new (``make bench-http``).

    .venv-np2/bin/python benchmarks/http_front_door.py [--old REV] [--rounds 3] [--duration 5]

1. Parser cost: one typical request (``POST /invocations``, five fields, 64 floats of JSON)
   parsed and its answer head framed, in µs, by the hand-written parser of ``REV``
   (``serving/worker.py``'s ``parse_head`` and body framing), by ``serving.hosts.gunicorn.http1``
   (llhttp through httptools, with our checks), and by h11 (a pure-Python candidate).
2. Servers: ``serve --workers 2`` from the tree at ``REV`` and from this tree, same
   environment, on numpy-linear and the peers' TorchScript MLP (64 → 256 → 256 → 10,
   ``OMP_NUM_THREADS=1``), wrk at 8 and 32 clients, in alternating rounds (old, new, new,
   old, …) so that drift on a shared machine falls on both alike. Requests/s, p50/p99 and
   the servers' CPU ms per request are the median over rounds; the ratio is new / old.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(REPO))

from loadgen import (  # noqa: E402
    machine,
    old_new_row,
    old_against_new,
    table,
    tree_at,
    write_section,
)

BUILD = REPO / "build" / "bench" / "http"
VENV = REPO / ".venv-np2"
#: The last commit with the hand-written parser.
OLD_REV = "c5a6d2b"

BODY = json.dumps([[round(i / 7, 6) for i in range(64)]]).encode()
REQUEST = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
           b"Content-Type: application/json\r\nAccept: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
ANSWER_HEADERS = [("Content-Type", "application/json"), ("Content-Length", "20"),
                  ("X-Request-Id", "0123456789abcdef0123456789abcdef")]


def old_tree(rev: str) -> Path:
    """``serving/`` and ``handlers/`` as they were at ``rev``, unpacked under build/."""
    return Path(tree_at(rev, BUILD))


def per_request_us(function, count: int = 20000) -> float:
    function()
    best = float("inf")
    for _ in range(5):  # the best of five: the least disturbed by the other core's work
        started = time.perf_counter()
        for _ in range(count):
            function()
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    return best


def parser_costs(tree: Path) -> list[list[str]]:
    # The old worker imports the old tree's modules (this tree's serving has other
    # paths): the old tree first on sys.path while it loads, then forgotten again.
    sys.path.insert(0, str(tree))
    try:
        spec = importlib.util.spec_from_file_location("old_worker", tree / "serving" / "worker.py")
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    finally:
        sys.path.remove(str(tree))
        for name in [n for n in sys.modules if n.split(".")[0] in ("serving", "handlers")]:
            del sys.modules[name]

    def old_parse() -> None:
        buf = bytearray(REQUEST)
        end = buf.find(b"\r\n\r\n")
        head = old.parse_head(bytes(buf[:end]))
        del buf[:end + 4]
        body = bytes(buf[:head.length])
        names = {name.lower() for name, _ in ANSWER_HEADERS}
        lines = [f"{head.version} 200 OK", *(f"{n}: {v}" for n, v in ANSWER_HEADERS)]
        if "date" not in names:
            lines.append("Date: Tue, 01 Dec 2026 10:00:00 GMT")
        ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body[:0]

    from serving.hosts.gunicorn.http1 import RequestReader, frame_response

    def new_parse() -> None:
        reader = RequestReader(6 << 20)
        reader.feed(REQUEST, 0.0)
        request = reader.ready.popleft()
        frame_response(request.version, request.method, "200 OK", ANSWER_HEADERS,
                       request.keep_alive, "Tue, 01 Dec 2026 10:00:00 GMT")

    reader = RequestReader(6 << 20)  # one parser per connection: reused across its requests

    def new_parse_kept_alive() -> None:
        reader.feed(REQUEST, 0.0)
        request = reader.ready.popleft()
        frame_response(request.version, request.method, "200 OK", ANSWER_HEADERS,
                       request.keep_alive, "Tue, 01 Dec 2026 10:00:00 GMT")

    rows = [["hand-written (old)", f"{per_request_us(old_parse):.1f}"],
            ["llhttp + our checks, kept-alive connection",
             f"{per_request_us(new_parse_kept_alive):.1f}"],
            ["llhttp + our checks, new connection", f"{per_request_us(new_parse):.1f}"]]
    try:
        import h11
    except ImportError:
        rows.append(["h11 0.16", "not installed"])
        return rows
    connection = h11.Connection(h11.SERVER)
    headers = [(n.lower().encode(), v.encode()) for n, v in ANSWER_HEADERS]

    def h11_parse() -> None:
        connection.receive_data(REQUEST)
        connection.next_event()
        body = connection.next_event()
        connection.next_event()  # EndOfMessage
        connection.send(h11.Response(status_code=200, headers=headers))
        connection.send(h11.Data(data=b"x" * 20))
        connection.send(h11.EndOfMessage())
        connection.start_next_cycle()
        return body

    rows.append([f"h11 {h11.__version__}, kept-alive connection",
                 f"{per_request_us(h11_parse):.1f}"])
    return rows


def servers(old: Path, rounds: int, duration: float) -> list[list[str]]:
    from make_model import make

    mlp = BUILD / "mlp"
    if not (mlp / "model.pt").exists():
        make(str(mlp))
    models = {"numpy-linear": (REPO / "examples" / "numpy-linear" / "model",
                               b'[[1.0, 2.0, 3.0]]'),
              "TorchScript MLP": (mlp, (mlp / "payload.json").read_bytes())}
    environ = {"OMP_NUM_THREADS": "1"}
    rows = []
    for model_name, (model_dir, body) in models.items():
        results = old_against_new({"old": old, "new": REPO}, model_dir, body, "/invocations",
                                  BUILD / f"{model_name.replace(' ', '-')}.json",
                                  rounds=rounds, duration=duration, venv=VENV,
                                  logs=BUILD / "logs", env=environ)
        for clients in (8, 32):
            rows.append(old_new_row(model_name, clients, results[("old", clients)],
                                    results[("new", clients)]))
            print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD_REV, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--only", default="parser,servers")
    args = parser.parse_args()
    (BUILD / "logs").mkdir(parents=True, exist_ok=True)
    old = old_tree(args.old)
    what = " (hand-written parser)" if args.old == OLD_REV else ""
    parts = [f"Machine: {machine()}. Old: the tree at `{args.old}`{what}; new: "
             "this tree. Command: `make bench-http` "
             f"(`.venv-np2/bin/python benchmarks/http_front_door.py --rounds {args.rounds} "
             f"--duration {args.duration:g}`)."]
    if "parser" in args.only:
        rows = parser_costs(old)
        print(table(["parser", "µs per request and answer head"], rows), flush=True)
        parts.append(table(["parser (one request parsed, its answer head framed)",
                            "µs per request"], rows))
    if "servers" in args.only:
        rows = servers(old, args.rounds, args.duration)
        parts.append(f"Medians of {args.rounds} alternating rounds of {args.duration:g} s, "
                     "`serve --workers 2`, wrk with 2 threads:\n\n" + table(
                         ["model", "clients", "old req/s", "new req/s", "new × old",
                          "old p50 / p99 ms", "new p50 / p99 ms", "old CPU ms/req",
                          "new CPU ms/req", "CPU old ÷ new"], rows))
    if not args.no_write and args.only == "parser,servers":
        write_section("\n\n".join(parts), "http-front-door")
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
