"""The Open Inference Protocol over gRPC against REST, on the same server and model
(``make bench-grpc``).

    .venv/bin/python benchmarks/grpc_rest.py [--rounds 3] [--duration 5] [--no-write]

One ``serve --workers 2 --grpc-port`` (``OMP_NUM_THREADS=1``) holding the peers' TorchScript
MLP (64 → 256 → 256 → 10), and one client tool for every transport, so that what differs is
the transport: h2load (nghttp2), HTTP/1.1 keep-alive for REST (``--h1``) and HTTP/2 (h2c) for
gRPC, one request in flight per connection (``-m 1``), at 8 and 32 connections. The same
input every time, a [1, 64] FP32 tensor:

- REST, JSON (``"data": [...]``), what curl and most clients send;
- REST, the binary tensor data extension (tritonclient.http's way);
- gRPC, ``raw_input_contents`` (tritonclient.grpc's way): a framed ``ModelInferRequest``
  posted as the body (h2load sends bytes; gRPC is HTTP/2 with a 5-byte frame header).

h2load counts every HTTP 200, and a gRPC error is an HTTP 200 with ``grpc-status`` in its
trailers: so each run is checked against the server's own count of failed calls
(``serving_requests_total`` for the gRPC route, status other than 200, must not grow), and
each body's answer is checked once by a real client before the runs. Latency percentiles come
from h2load's per-request log; requests/s, p50/p99 and the server's CPU ms a request are
medians over rounds, the transports' order turned each round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

from loadgen import (  # noqa: E402
    ServerProcess,
    cpu_seconds,
    free_port,
    machine,
    table,
    write_section,
)

BUILD = REPO / "build" / "bench" / "grpc"
GRPC_ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, list[str]]]:
    """Each transport's request body and headers."""
    from tritonclient.grpc import service_pb2 as pb

    json_body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}).encode()
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    request = pb.ModelInferRequest(model_name="default", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.astype("<f4").tobytes()]).SerializeToString()
    return {
        "REST, JSON": (json_body, ["content-type: application/json"]),
        "REST, binary tensor": (head + x.astype("<f4").tobytes(),
                                ["content-type: application/octet-stream",
                                 f"inference-header-content-length: {len(head)}"]),
        "gRPC, raw contents": (b"\0" + struct.pack(">I", len(request)) + request,
                               ["content-type: application/grpc", "te: trailers"]),
    }


def check_answers(port: int, grpc_port: int, x: np.ndarray) -> np.ndarray:
    """The model's answer through each transport's real client: all the same."""
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    answers = []
    for module, address, binary in ((triton_http, f"127.0.0.1:{port}", False),
                                    (triton_http, f"127.0.0.1:{port}", True),
                                    (triton_grpc, f"127.0.0.1:{grpc_port}", None)):
        client = module.InferenceServerClient(address)
        item = module.InferInput("x", list(x.shape), "FP32")
        if binary is None:
            item.set_data_from_numpy(x)
        else:
            item.set_data_from_numpy(x, binary_data=binary)
        answers.append(client.infer("default", [item]).as_numpy("output-0"))
        client.close()
    for other in answers[1:]:
        np.testing.assert_allclose(other, answers[0], rtol=1e-6)
    return answers[0]


def grpc_failures(port: int) -> float:
    """Failed gRPC infer calls so far, as the server counts them."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    total = 0.0
    for labels, value in re.findall(r'^serving_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        if f'route="{GRPC_ROUTE}"' in labels and 'status="200"' not in labels:
            total += float(value)
    return total


def h2load(url: str, body: bytes, headers: list[str], clients: int, seconds: float,
           h1: bool, server: ServerProcess) -> dict[str, float]:
    body_file, log_file = BUILD / "body.bin", BUILD / "requests.log"
    body_file.write_bytes(body)
    if log_file.exists():
        log_file.unlink()
    argv = ["h2load", "-c", str(clients), "-t", "2", "-m", "1", "-D", f"{seconds:g}",
            "--warm-up-time", "1", "-d", str(body_file), f"--log-file={log_file}",
            *(["--h1"] if h1 else []), *sum((["-H", h] for h in headers), []), url]
    before = cpu_seconds(server.pids())
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = cpu_seconds(server.pids()) - before
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)
    if done is None or int(done.group(3)) or int(done.group(4)):
        raise RuntimeError(f"h2load failed against {url}:\n{out[-2000:]}")
    micros = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines())
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    return {"rps": rps, "p50": micros[len(micros) // 2] / 1000,
            "p99": micros[int(len(micros) * 0.99)] / 1000,
            "cpu_ms": cpu * 1000 / len(micros)}


def run(rounds: int, duration: float) -> list[list[str]]:
    from make_model import make

    BUILD.mkdir(parents=True, exist_ok=True)
    mlp = BUILD / "mlp"
    if not (mlp / "model.pt").exists():
        make(str(mlp))
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    port, grpc_port = free_port(), free_port()
    server = ServerProcess("serve-grpc", [str(REPO / ".venv" / "bin" / "serve"),
                                          "--model-dir", str(mlp), "--host", "127.0.0.1",
                                          "--port", str(port), "--grpc-port", str(grpc_port),
                                          "--workers", "2"],
                           env={"OMP_NUM_THREADS": "1", "SETUPTOOLS_USE_DISTUTILS": "stdlib"},
                           log_path=str(BUILD / "serve.log"))
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        import urllib.request

        server.wait_until(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/ping", timeout=5).status == 200, 120)
        time.sleep(2)  # the second worker
        check_answers(port, grpc_port, x)
        transports = list(bodies(x).items())
        for round_ in range(rounds):
            order = transports if round_ % 2 == 0 else transports[::-1]
            for name, (body, headers) in order:
                grpc = name.startswith("gRPC")
                url = (f"http://127.0.0.1:{grpc_port}{GRPC_ROUTE}" if grpc
                       else f"http://127.0.0.1:{port}/v2/models/default/infer")
                for clients in (8, 32):
                    failed = grpc_failures(port)
                    got = h2load(url, body, headers, clients, duration, not grpc, server)
                    if grpc_failures(port) != failed:
                        raise RuntimeError(f"{name}: gRPC calls failed during the run")
                    results.setdefault((name, clients), []).append(got)
                    print(name, clients, {k: round(v, 3) for k, v in got.items()}, flush=True)
    finally:
        server.stop()
    rows = []
    for (name, clients), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rest = statistics.median(r["rps"] for r in results[("REST, JSON", clients)])
        rows.append([name, str(clients), f"{med['rps']:.0f}", f"{med['rps'] / rest:.2f}",
                     f"{med['p50']:.1f}", f"{med['p99']:.1f}", f"{med['cpu_ms']:.3f}"])
    rows.sort(key=lambda r: (int(r[1]), r[0]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is not installed: apt-get install nghttp2-client", file=sys.stderr)
        return 1
    rows = run(args.rounds, args.duration)
    text = (f"Machine: {machine()}. Command: `make bench-grpc` (`.venv/bin/python "
            f"benchmarks/grpc_rest.py --rounds {args.rounds} --duration {args.duration:g}`). "
            f"One `serve --workers 2 --grpc-port` (`OMP_NUM_THREADS=1`), the peers' "
            f"TorchScript MLP, a [1, 64] FP32 input; h2load for every transport (HTTP/1.1 "
            f"keep-alive for REST, h2c for gRPC, one request in flight per connection); "
            f"medians of {args.rounds} rounds of {args.duration:g} s, the order turned each "
            f"round; × REST JSON: requests/s against REST with JSON tensors at the same "
            f"connections:\n\n" + table(
                ["transport", "connections", "req/s", "× REST JSON", "p50 ms", "p99 ms",
                 "server CPU ms/req"], rows))
    if not args.no_write:
        write_section(text, "oip-grpc")
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
