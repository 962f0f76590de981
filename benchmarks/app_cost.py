"""The app's own CPU per request, in one process: what ``benchmarks/invocation_path.py``
runs with ``--in-process``, once per tree and case (a child process each, so that the old and
the new tree never share ``sys.modules``).

    python benchmarks/app_cost.py TREE MODEL PATH BODY_FILE REQUESTS

The app is built as a worker builds it (``assemble_loaded``, ``create_app``: its runtime's
prediction threads, its metrics, its access line at INFO into a handler that drops it) and
called as WSGI ``REQUESTS`` times; printed: the best of five passes' CPU seconds (every
thread of the process) per request, in microseconds. No HTTP, no sockets, no other process:
what is left is the front door, the protocol's adapter, the invocation service and the
pipeline, which is what the invocation path changed.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time


def main() -> int:
    tree, model, path, body_file, count = sys.argv[1:6]
    sys.path.insert(0, tree)
    from serving.assembly.build import assemble_loaded
    from serving.config import Config
    from serving.http.app import create_app

    config = Config.load(["--model-dir", model], environ={})
    assembly = assemble_loaded(config, 1)
    app = create_app(config, assembly.models, metrics=assembly.metrics)
    access = logging.getLogger("serving.access")
    access.setLevel(logging.INFO)  # the line is made, as serve makes it, then dropped
    access.addHandler(logging.NullHandler())
    access.propagate = False
    with open(body_file, "rb") as f:
        body = f.read()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "RAW_URI": path,
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
               "HTTP_ACCEPT": "application/json"}
    statuses = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None
                       ) -> None:
        statuses.append(status)

    def one() -> None:
        b"".join(app({**environ, "wsgi.input": io.BytesIO(body)}, start_response))

    one()
    if not statuses[-1].startswith("200"):
        raise SystemExit(f"{path} answered {statuses[-1]}")
    requests = int(count)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(requests):
            one()
        best = min(best, (time.process_time() - started) / requests)
    if any(not s.startswith("200") for s in statuses):
        raise SystemExit(f"{path}: not every answer was 200")
    print(f"{best * 1e6:.1f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
