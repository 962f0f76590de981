"""gunicorn, embedded: the master, its workers, and when the model is loaded.

Workers are :class:`serving.hosts.gunicorn.worker.ServingWorker` (requests read whole under
deadlines before a thread sees them; see that module), each with a
:class:`serving.runtime.executor.Runtime` running predictions under the request deadline.

With ``preload`` (the default) the model is loaded in the master before
anything listens, and the forked workers share it copy-on-write. Without it,
each worker loads its own copy in a background thread right after it starts
(GPU serving): the worker takes no connection meanwhile (other workers, or the
listen backlog, hold the traffic), and its heartbeat keeps going, so a slow load
is never killed as a hung worker.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import mmap
import os
import shutil
import signal
import sys
import threading
import typing as t

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from serving.assembly.build import Assembly
from serving.config import Config
from serving.hosts.gunicorn.balance import WorkerLoads
from serving.http.app import create_app
from serving.runtime import logs
from serving.runtime.executor import Runtime
from serving.runtime.metrics import retire_process

__all__ = ["ServingApplication", "gunicorn_options", "run"]

log = logging.getLogger(__name__)

#: How long kept-alive connections wait for the next request, in seconds.
KEEPALIVE_SECONDS = 5
#: The master waits this long past the workers' own grace period before it kills them:
#: a worker answers its last requests with 503 itself at the end of its grace period.
MASTER_GRACE_MARGIN = 5
#: serve's exit status when a stop had to drop requests unanswered.
EXIT_DROPPED = 1


def _assign_worker_index(arbiter: Arbiter, worker: t.Any) -> None:
    """gunicorn's ``pre_fork`` hook: give each worker the lowest free index.

    Runs in the master, so the child inherits the attribute; a replaced worker
    takes the index of the one it replaces.
    """
    taken = {getattr(w, "index", None) for w in arbiter.WORKERS.values()}
    worker.index = next(i for i in range(len(taken) + 1) if i not in taken)
    application: ServingApplication = arbiter.app
    application.spawned += 1
    if application.spawned > application.config.workers and application.metrics is not None:
        application.metrics.worker_restarts.inc()


def _enter_worker(arbiter: Arbiter, worker: t.Any) -> None:
    """gunicorn's ``post_fork`` hook, in the new worker process: its device and threads."""
    application: ServingApplication = arbiter.app
    plan = application.plan
    logs.worker_index = worker.index
    application.models.enter_worker(worker.index, plan.device_for(worker.index),
                                    plan.threads_per_worker)
    # What the master made (a preloaded model, the frameworks' modules) is never garbage
    # the worker collects: out of the collector's sight, a full collection no longer walks
    # it, which took 40-90 ms at a time under load (the torchserve package's objects
    # beside torch's), and leaves its pages shared with the master.
    gc.freeze()


def _worker_exited(arbiter: Arbiter, worker: t.Any) -> None:
    """gunicorn's ``child_exit`` hook, in the master: fold the worker's metric files, and
    leave its connection count out of the balance."""
    application: ServingApplication = arbiter.app
    if application.loads is not None:
        application.loads.clear(getattr(worker, "index", -1))
    directory = application.metrics.directory if application.metrics is not None else None
    if directory is not None:
        try:
            retire_process(directory, worker.pid)
        except OSError as exc:  # metrics must never take the server down
            log.warning("could not fold the metrics of worker %s: %s", worker.pid, exc)


def _gunicorn_log_level(level: int) -> str:
    """gunicorn takes level names only: the highest named level at or below ``level``."""
    for name in ("critical", "error", "warning", "info"):
        if level >= getattr(logging, name.upper()):
            return name
    return "debug"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_options(config: Config) -> dict[str, t.Any]:
    """Our settings, in gunicorn's names."""
    bind = [_address(config.host, config.port)]
    if config.metrics and config.metrics_port is not None:
        bind.append(_address(config.host, config.metrics_port))
    if config.management_port is not None:
        bind.append(_address(config.management_host, config.management_port))
    return {
        "bind": bind,
        "workers": config.workers,
        "worker_class": "serving.hosts.gunicorn.worker.ServingWorker",
        "threads": config.concurrency,
        "worker_connections": config.max_connections,
        "timeout": config.timeout,
        "graceful_timeout": config.timeout + MASTER_GRACE_MARGIN,
        "keepalive": KEEPALIVE_SECONDS,
        "preload_app": config.preload,
        "loglevel": _gunicorn_log_level(config.log_level),
        "accesslog": None,  # the app logs one line per request itself (serving.access)
        "errorlog": "-",
        "logger_class": "serving.hosts.gunicorn.logger.GunicornLogger",
        # The workers' heartbeat files, touched every second: in shared memory where there
        # is some (never a disk, nor a read-only root's /tmp), else the temporary directory.
        "worker_tmp_dir": "/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        "control_socket_disable": True,  # no management socket, no extra master thread
        "pre_fork": _assign_worker_index,
        "post_fork": _enter_worker,
        "child_exit": _worker_exited,
        "proc_name": "serving",
    }


class ServingArbiter(Arbiter):
    """gunicorn's master, which exits non-zero when a stop dropped requests."""

    app: ServingApplication

    def kill_workers(self, sig: int) -> None:
        if sig == signal.SIGKILL and self.WORKERS:  # the grace period ran out
            self.app.note_dropped()
        super().kill_workers(sig)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        try:
            super().halt(reason, exit_status)
        except SystemExit as stop:
            if not stop.code and self.app.dropped_any:
                self.log.error("stopped with requests dropped: exiting with status %d",
                               EXIT_DROPPED)
                sys.exit(EXIT_DROPPED)
            raise


class ServingApplication(BaseApplication):
    """The gunicorn application serving an assembly's models."""

    def __init__(self, assembly: Assembly) -> None:
        self.assembly = assembly
        self.config = config = assembly.config
        #: The models every worker serves, by name.
        self.models = assembly.models
        self.plan = assembly.plan
        self.metrics = assembly.metrics
        #: Workers forked so far: past config.workers, each replaces one that exited.
        self.spawned = 0
        #: Per worker after fork: runs requests under their deadline.
        self.runtime = Runtime(config.concurrency, config.deadline_seconds, core=config.threads)
        # One byte shared by the master and its forked workers: set when a stop dropped
        # requests, so that serve's exit status says so.
        self._dropped = mmap.mmap(-1, 1)
        #: The connections each worker holds, shared, to spread them evenly.
        self.loads = WorkerLoads(config.workers) if config.workers > 1 else None
        super().__init__()

    def note_dropped(self) -> None:
        self._dropped[0] = 1

    @property
    def dropped_any(self) -> bool:
        return self._dropped[0] == 1

    def run(self) -> None:
        try:
            ServingArbiter(self).run()
        except RuntimeError as exc:  # as BaseApplication.run: a bad gunicorn setting
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.config).items():
            if key in self.cfg.settings:  # options an older gunicorn lacks are skipped
                self.cfg.set(key, value)

    def load(self) -> t.Any:
        app = create_app(self.config, self.models, self.runtime, self.metrics)
        if not self.config.preload and (not self.models.multi or self.models.startup):
            threading.Thread(target=self._load_in_worker, name="model-loader", daemon=True).start()
        return app

    def _load_in_worker(self) -> None:
        if self.models.multi:  # a model store's archives, in a repository
            try:
                self.models.load_startup()
            except Exception as exc:
                log.exception("worker: loading the model archives failed: %s", exc)
                os._exit(Arbiter.WORKER_BOOT_ERROR)
            gc.freeze()
            return
        for pipeline in self.models.loaded():  # one; or a model store's archives
            index = pipeline.context.worker_index
            try:
                pipeline.load_model()
            except Exception as exc:
                log.exception("worker %s: loading the model failed: %s", index, exc)
                # Exit code 3 tells the master this worker could not boot: it stops the
                # server instead of restarting the worker for ever.
                os._exit(Arbiter.WORKER_BOOT_ERROR)
            log.info("worker %s: model loaded", index)
            if self.metrics is not None and pipeline.load_seconds is not None:
                self.metrics.model_load_seconds.set(pipeline.load_seconds)
        gc.freeze()  # the models loaded here too (see _enter_worker)


def grpc_port_problem(host: str, port: int) -> str | None:
    """Why the workers' gRPC servers could not listen on ``host:port`` (``None``: they can),
    found here before fork: each worker binds it itself (SO_REUSEPORT), and a worker that
    cannot would be restarted again and again. grpcio itself is not imported here."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((host, port))
    except OSError as exc:
        return f"--grpc-port {port} on {host}: {exc.strerror or exc}"
    finally:
        probe.close()
    # Looked for, not imported: the master must not import grpcio (see
    # serving.protocols.kserve.grpc_server).
    triton = importlib.util.find_spec("tritonclient")
    if importlib.util.find_spec("grpc") is None or triton is None or not any(
            os.path.isfile(os.path.join(where, "grpc", "service_pb2.py"))
            for where in triton.submodule_search_locations or ()):
        return ("--grpc-port needs the grpc extra (grpcio and tritonclient[grpc]): pip "
                "install 'serving-toolkit[grpc]'")
    return None


def run(config: Config, metrics_dir: str | None) -> int:
    """``serve`` on gunicorn (:class:`serving.hosts.Host`): assemble, then serve until
    stopped; the exit status (1: the model or the user code could not load)."""
    # Imported here so that `serve --help` and setting errors stay fast.
    from handlers.content import PluginError
    from serving.assembly.build import assemble
    from serving.errors import StartupError
    from serving.hosts import make_shared_dir

    if config.grpc_port is not None:
        problem = grpc_port_problem(config.host, config.grpc_port)
        if problem is not None:
            print(f"serve: error: {problem}", file=sys.stderr)
            return 1
    # Multi-model: the records of the loaded models, which every worker reads.
    models_dir = None
    if config.multi_model or config.management_port is not None:
        try:
            models_dir = make_shared_dir("serving-models-")
        except OSError as exc:
            print(f"serve: error: multi-model: no directory for the models' records: {exc}",
                  file=sys.stderr)
            return 1
    if config.enable_stateful_sessions:
        from serving.contract.sessions import session_store

        try:  # the directory, made now: every worker's store opens it
            session_store(config)
        except StartupError as exc:
            print(f"serve: error: {exc}", file=sys.stderr)
            return 1
    keys = None
    if config.token_auth and (config.model_store is not None or
                              config.management_port is not None):
        from serving.protocols.torchserve.tokens import KeyFile

        try:  # TorchServe's key file, which every worker reads
            keys = KeyFile.create(config.key_file, config.token_expiration_min)
        except StartupError as exc:
            print(f"serve: error: {exc}", file=sys.stderr)
            return 1
        log.info("token authorization is on (TorchServe's): keys in %s "
                 "(--disable-token-auth turns it off)", config.key_file)
    master = os.getpid()
    try:
        try:
            assembly = assemble(config, metrics_dir, models_dir)
        except (StartupError, PluginError) as exc:
            print(f"serve: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # model_fn failed: the traceback is the user's best clue
            log.exception("loading the model failed")
            print(f"serve: error: loading the model failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
        ServingApplication(assembly).run()  # exits: gunicorn's master ends with SystemExit
        return 0
    finally:
        # The forked workers leave through here too: only the master removes the directory.
        if models_dir is not None and os.getpid() == master:
            shutil.rmtree(models_dir, ignore_errors=True)
        if keys is not None and os.getpid() == master:
            keys.remove()
