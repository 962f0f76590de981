"""The Ray Serve host: the same server as ``serve``, in Ray Serve replicas.

Each replica builds what a gunicorn worker has, from the same code: :func:`assemble`
(settings, device, user code, handlers, model), the same Flask app (:func:`create_app`:
routes, negotiation, error JSON, request ids, metrics) and the same :class:`Runtime`
(deadlines). Ray Serve's HTTP proxy hands each request to a replica, which passes it to
the app as a WSGI call on one of its threads, so an answer through Ray is byte for byte
the answer through gunicorn. What Ray brings: replicas on any node of a cluster, each
with its CPUs and GPUs, autoscaling, and a dead replica replaced.

- **Dynamic batching** (``SERVING_MAX_BATCH_SIZE`` > 1) runs on ``@serve.batch``: Ray
  gathers a replica's concurrent predict steps, and our batcher joins, splits, and halves a
  failing batch until each request has its own answer or its own error.
- **A stuck prediction** (past its deadline and still running) makes the replica's health
  check fail: Ray replaces it, as gunicorn replaces a worker.
- **Metrics**: replicas on one node count in one directory, so ``/metrics`` adds up the
  replicas of the node that answers it.

``serve --engine ray`` (:func:`run`) starts a local Ray instance, or joins the cluster at
``RAY_ADDRESS``; ``serve deploy`` / ``serve run`` of a Ray Serve config file builds the
application with :func:`app_builder` (``deploy/ray/serve-config.yaml``).

Ray is imported only here, and only when this host is used: ``pip install
'serving-toolkit[ray]'``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import typing as t

from serving.config import Config
from serving.errors import StartupError
from serving.http.app import RESPONSE_ID_HEADER, create_app
from serving.http.bridge import Answer, build_environ, call_app
from serving.runtime.batching import Batcher, Waiting

__all__ = ["APP_NAME", "ServingReplica", "app_builder", "build_application",
           "deployment_options", "run", "scope_environ"]

log = logging.getLogger("serving")

#: The Ray Serve application's name (``serve status`` shows it).
APP_NAME = "serving"
#: Ray's proxy gives up on a request this long after our own deadline: the replica's 504,
#: with our JSON body, always comes first.
PROXY_TIMEOUT_MARGIN = 5
#: How often a replica writes its counts to the metrics files (as a gunicorn worker's loop).
FLUSH_SECONDS = 0.25


def deployment_options(config: Config) -> dict[str, t.Any]:
    """Our settings, in the names of ``@serve.deployment``."""
    options: dict[str, t.Any] = {
        "name": "Model",
        "ray_actor_options": {"num_cpus": config.ray_num_cpus, "num_gpus": config.ray_num_gpus},
        # What one replica holds at once: its threads' worth answered, the rest queued in
        # the replica under their deadline (as a gunicorn worker holds connections). At
        # only its threads' worth, Ray's router holds the rest and retries them with
        # backoff, which halved throughput at 32 clients (BENCHMARKS.md, "Ray Serve against
        # gunicorn").
        "max_ongoing_requests": 8 * config.concurrency,
        # Loading a model (and importing a framework) takes a while on a small machine.
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": config.timeout,
        # A model that cannot load fails the same way each time: say so soon.
        "max_constructor_retry_count": 2,
    }
    if config.ray_max_replicas is None:
        options["num_replicas"] = config.ray_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": config.ray_replicas,
            "initial_replicas": config.ray_replicas,
            "max_replicas": config.ray_max_replicas,
            "target_ongoing_requests": config.ray_target_ongoing_requests,
        }
    return options


def build_application(config: Config, metrics_dir: str | None = None) -> t.Any:
    """The Ray Serve application serving ``config``'s model."""
    from ray import serve

    deployment = serve.deployment(ServingReplica).options(**deployment_options(config))
    return deployment.bind(config, metrics_dir)


def app_builder(args: dict[str, str]) -> t.Any:
    """The application for a Ray Serve config file (``import_path:
    serving.rayserve:app_builder``, which names this); ``args`` are settings by their
    environment variable names (``SM_MODEL_DIR``, ``SERVING_RAY_REPLICAS``, …), over the
    driver's environment."""
    config = Config.load([], environ={**os.environ, **{k: str(v) for k, v in args.items()}})
    return build_application(config)


class RayBatcher(Batcher):
    """Dynamic batching on ``@serve.batch``: Ray gathers the predict steps of a replica's
    concurrent requests (up to ``max_size``, waiting at most ``max_delay``); each batch
    is joined, predicted, split, and halved on failure as :class:`Batcher` does."""

    def __init__(self, predict: t.Callable[[t.Any], t.Any], *, max_size: int,
                 max_delay: float) -> None:
        from ray import serve

        super().__init__(predict, max_size=max_size, max_delay=max_delay)
        #: The replica's event loop, where @serve.batch gathers; set on its first request.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._gathered = serve.batch(max_batch_size=self.max_size,
                                     batch_wait_timeout_s=self.max_delay)(self._handle)

    # Ray decides when a batch is gathered: no count of requests on their way is needed.
    def expect(self) -> None:
        pass

    def unexpect(self) -> None:
        pass

    def submit(self, data: t.Any, key: tuple[t.Any, ...], deadline: float) -> t.Any:
        request = Waiting(data, key, deadline)
        assert self.loop is not None, "the replica sets its loop before any request"
        gathered = asyncio.run_coroutine_threadsafe(self._gathered(request), self.loop)
        # Released by _run_batch in every case (answer, own error, past its deadline);
        # unless Ray's batching itself failed before it got there.
        while not request.done.acquire(timeout=0.5):
            if gathered.done() and gathered.exception() is not None:
                raise gathered.exception()  # type: ignore[misc]
        if request.error is not None:
            raise request.error
        return request.result

    async def _handle(self, requests: list[Waiting]) -> list[None]:
        await asyncio.get_running_loop().run_in_executor(None, self._run_gathered, requests)
        return [None] * len(requests)

    def _run_gathered(self, requests: list[Waiting]) -> None:
        groups: dict[tuple[t.Any, ...], list[Waiting]] = {}
        for request in requests:
            groups.setdefault(request.key, []).append(request)
        for group in groups.values():  # inputs that cannot be joined run in batches apart
            batch: list[Waiting] = []
            rows = 0
            for request in group:
                if batch and rows + request.rows > self.max_size:
                    self._run_batch(batch)
                    batch, rows = [], 0
                batch.append(request)
                rows += request.rows
            self._run_batch(batch)


def scope_environ(scope: dict[str, t.Any], body: bytes, *, port: int,
                  arrived: float) -> dict[str, t.Any]:
    """The WSGI environ of an ASGI HTTP request (as Ray's proxy hands it over) whose body
    was read (:mod:`serving.http.bridge`, the same builder as the gunicorn worker's).

    A declared Content-Length is passed on as declared, so that the app refuses one over
    the limit with the same 413 (its body unread past the limit).
    """
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    declared = next((v for k, v in headers if k == "content-length"), None)
    chunked = any(k == "transfer-encoding" for k, _ in headers)
    raw_path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    server = scope.get("server") or ("localhost", port)
    client = scope.get("client")
    return build_environ(
        method=scope["method"], path=raw_path, query=query,
        raw_uri=raw_path + ("?" + query if query else ""),
        protocol="HTTP/" + scope.get("http_version", "1.1"), headers=headers, body=body,
        content_length=declared if declared is not None else
        (str(len(body)) if body or chunked else None),
        server_name=str(server[0]), server_port=str(port),
        remote_addr=client[0] if client else "", remote_port=str(client[1]) if client else "",
        url_scheme=scope.get("scheme", "http"), multiprocess=False, arrived=arrived)


class ServingReplica:
    """One Ray Serve replica: an assembled server, answering through its Flask app.

    Made a deployment by :func:`build_application` (``serve.deployment(ServingReplica)``),
    so that importing this module needs no Ray.
    """

    def __init__(self, config: Config, metrics_dir: str | None = None) -> None:
        from serving.assembly.build import assemble_loaded
        from serving.runtime import logs
        from serving.runtime.executor import Runtime

        logs.configure(config.log_level, config.log_format)
        if metrics_dir is not None and config.metrics:
            from serving.runtime.metrics import join_directory

            join_directory(metrics_dir)
        # One replica is one process that never forks: the model loads here, on the
        # replica's device (Ray makes the GPUs it gave the replica the only visible ones).
        self.config = config = dataclasses.replace(
            config, device="cuda" if config.ray_num_gpus > 0 else "cpu")
        assembly = assemble_loaded(config, max(1, int(config.ray_num_cpus)),
                                   metrics_dir if config.metrics else None, RayBatcher)
        self.models, self.metrics = assembly.models, assembly.metrics
        streaming = [p.source for p in self.models.loaded() if p.streams]
        if streaming:
            # Ray Serve takes WebSockets only through a FastAPI ingress, not the plain
            # HTTP deployment this replica is; a stream_fn silently not served would be
            # worse than none.
            raise StartupError(
                f"{streaming[0]}: stream_fn (bidirectional streaming) is served by "
                f"--engine gunicorn only; the Ray engine does not serve WebSockets")
        batcher = assembly.default.batcher
        self.batcher = batcher if isinstance(batcher, RayBatcher) else None
        self.runtime = Runtime(config.concurrency, config.deadline_seconds)
        self.app = create_app(config, self.models, self.runtime, self.metrics)
        # The app's calls block (on the runtime, under the deadline): they run on threads
        # of their own, as many as the replica answers at once. The requests queued past
        # those wait for a thread, their deadline counting from arrival; /ping has a thread
        # of its own, so that a health check never waits behind them.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            config.concurrency, thread_name_prefix="http")
        self._ping_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ping")
        self._in_flight = 0
        if self.metrics is not None:
            threading.Thread(target=self._flush_metrics, name="metrics", daemon=True).start()
        log.info("replica ready: pid %d, %s", os.getpid(), assembly.plan.device_for(0))

    def _flush_metrics(self) -> None:
        metrics = self.metrics
        assert metrics is not None
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                metrics.in_flight.set(self._in_flight)
                metrics.flush()
            except Exception:  # metrics must never take the replica down
                log.exception("could not write the metrics")

    def check_health(self) -> None:
        """Ray's health check: a replica whose prediction is stuck past its deadline is
        replaced, as gunicorn replaces such a worker."""
        if self.runtime.retire_reason is not None:
            raise RuntimeError(self.runtime.retire_reason)

    async def __call__(self, request: t.Any) -> t.Any:
        from starlette.responses import Response, StreamingResponse

        arrived = time.monotonic()
        loop = asyncio.get_running_loop()
        if self.batcher is not None and self.batcher.loop is None:
            self.batcher.loop = loop
        self._in_flight += 1
        try:
            environ = await self._environ(request, arrived)
            threads = self._ping_thread if environ["PATH_INFO"] == "/ping" else self._threads
            status, headers, body, rest = await loop.run_in_executor(threads, self._start,
                                                                     environ)
        except BaseException:
            self._in_flight -= 1
            raise
        if rest is None:
            self._in_flight -= 1
            return Response(body, status_code=status, headers=headers)

        answer, parts = rest, iter(rest)

        async def chunks() -> t.AsyncIterator[bytes]:
            try:
                while True:
                    chunk = await loop.run_in_executor(self._threads, next, parts, None)
                    if chunk is None:
                        return
                    if chunk:
                        yield chunk
            finally:
                self._in_flight -= 1
                await loop.run_in_executor(self._threads, answer.close)

        return StreamingResponse(chunks(), status_code=status, headers=headers)

    async def _environ(self, request: t.Any, arrived: float) -> dict[str, t.Any]:
        """The WSGI environ of a Starlette request, its body read up to the size limit
        (a larger one is left for the app to refuse with 413, unread past the limit)."""
        limit = self.config.max_payload_bytes
        headers = request.headers
        declared = headers.get("content-length")
        body = b""
        if not (declared and declared.isdigit() and int(declared) > limit):
            parts, size = [], 0
            async for part in request.stream():
                parts.append(part)
                size += len(part)
                if size > limit:
                    break
            body = b"".join(parts)
        return scope_environ(request.scope, body, port=self.config.port, arrived=arrived)

    def _start(self, environ: dict[str, t.Any]) -> tuple[int, dict[str, str], bytes,
                                                         Answer | None]:
        """Call the app: ``(status, headers, body, None)`` for a whole answer, or the answer
        itself, to be pulled chunk by chunk, for a streamed one (it has no Content-Length)."""
        answer = call_app(self.app, environ)
        headers = dict(answer.headers)
        # Ray's proxy puts its own X-Request-Id on every answer: the id the request came
        # with (which the app took, as the client's or the proxy's), so ours would repeat it.
        if headers.get(RESPONSE_ID_HEADER) == environ.get("HTTP_X_REQUEST_ID"):
            del headers[RESPONSE_ID_HEADER]
        if not answer.streamed:
            return answer.status_code, headers, answer.read(), None
        return answer.status_code, headers, b"", answer


def run(config: Config, metrics_dir: str | None) -> int:
    """``serve --engine ray``: serve ``config``'s model on Ray until SIGTERM or SIGINT.

    Starts a local Ray instance (``config.ray_address`` unset), or joins the cluster at
    that address; on a stop signal, removes the application, and stops the local Ray
    instance it started. Returns the exit status.
    """
    try:
        import ray
        from ray import serve
    except ImportError:
        print("serve: error: the ray engine needs Ray: pip install 'serving-toolkit[ray]'",
              file=sys.stderr)
        return 1
    local = config.ray_address is None
    options: dict[str, t.Any] = {"address": config.ray_address or "local",
                                 "include_dashboard": False, "log_to_driver": True,
                                 "configure_logging": False}
    if local:
        # The models live in the replicas; the object store only carries requests.
        options["object_store_memory"] = 256 * 2**20
    log.info("ray: %s", "starting a local instance" if local
             else f"joining the cluster at {config.ray_address}")
    ray.init(**options)
    # After ray.init, whose own SIGTERM handler would end this process on the spot.
    stop = threading.Event()
    signals = [0]

    def on_signal(*_: t.Any) -> None:
        signals[0] += 1
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        serve.start(http_options={
            "host": config.host, "port": config.port,
            "request_timeout_s": config.deadline_seconds + PROXY_TIMEOUT_MARGIN,
        })
        application = build_application(config, metrics_dir)
        serve.run(application, name=APP_NAME, route_prefix="/")
        replicas = (f"{config.ray_replicas}" if config.ray_max_replicas is None
                    else f"{config.ray_replicas}-{config.ray_max_replicas}")
        log.info("serving %s on Ray Serve at http://%s:%d: %s replica(s), %g CPU and %g GPU "
                 "each", config.model_dir, config.host, config.port, replicas,
                 config.ray_num_cpus, config.ray_num_gpus)
        while not stop.wait(1):
            pass
        log.info("stopping: removing the application (at most %d s)", config.timeout)
        return 0 if _remove(serve, local, config.timeout, lambda: signals[0] > 1) else 1
    except Exception as exc:
        log.error("serving on Ray failed: %s: %s", type(exc).__name__, exc)
        return 1
    finally:
        ray.shutdown()  # stops the local instance when this process started it


def _remove(serve: t.Any, local: bool, grace: float, hurry: t.Callable[[], bool]) -> bool:
    """Remove the application (its replicas finish what they hold), and Serve itself from a
    local instance; whether that was done within ``grace`` seconds.

    Bounded, because it waits on Ray's own processes: a Ctrl-C in a terminal (or a signal
    to the whole process group) reaches them too, and what they had to do then never
    comes. A second signal stops waiting at once.
    """
    def remove() -> None:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        except Exception as exc:
            log.warning("removing the application failed: %s: %s", type(exc).__name__, exc)

    remover = threading.Thread(target=remove, name="remove", daemon=True)
    remover.start()
    deadline = time.monotonic() + grace
    while remover.is_alive() and time.monotonic() < deadline and not hurry():
        remover.join(0.2)
    if remover.is_alive():
        log.error("the application was not removed in time: stopping Ray all the same")
        return False
    return True
