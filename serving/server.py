"""gunicorn, embedded: the master, its workers, and when the model is loaded.

With ``preload`` (the default) the model is loaded in the master before
anything listens, and the forked workers share it copy-on-write. Without it,
each worker loads its own copy in a background thread right after it starts
(GPU serving): the worker answers ``/ping`` with 503 meanwhile, and its
heartbeat keeps going, so a slow load is never killed as a hung worker.
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from serving.app import create_app
from serving.config import Config
from serving.devices import DevicePlan
from serving.pipeline import Pipeline

__all__ = ["ServingApplication", "gunicorn_options"]

log = logging.getLogger(__name__)

#: How long kept-alive connections wait for the next request, in seconds.
KEEPALIVE_SECONDS = 5


def _assign_worker_index(arbiter: Arbiter, worker: t.Any) -> None:
    """gunicorn's ``pre_fork`` hook: give each worker the lowest free index.

    Runs in the master, so the child inherits the attribute; a replaced worker
    takes the index of the one it replaces.
    """
    taken = {getattr(w, "index", None) for w in arbiter.WORKERS.values()}
    worker.index = next(i for i in range(len(taken) + 1) if i not in taken)


def _enter_worker(arbiter: Arbiter, worker: t.Any) -> None:
    """gunicorn's ``post_fork`` hook, in the new worker process: its device and threads."""
    application: ServingApplication = arbiter.app
    plan = application.plan
    application.pipeline.enter_worker(worker.index, plan.device_for(worker.index),
                                      plan.threads_per_worker)


def _gunicorn_log_level(level: int) -> str:
    """gunicorn takes level names only: the highest named level at or below ``level``."""
    for name in ("critical", "error", "warning", "info"):
        if level >= getattr(logging, name.upper()):
            return name
    return "debug"


def gunicorn_options(config: Config) -> dict[str, t.Any]:
    """Our settings, in gunicorn's names."""
    return {
        "bind": [f"[{config.host}]:{config.port}" if ":" in config.host
                 else f"{config.host}:{config.port}"],
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": config.threads,
        "timeout": config.timeout,
        "graceful_timeout": config.timeout,
        "keepalive": KEEPALIVE_SECONDS,
        "preload_app": config.preload,
        "loglevel": _gunicorn_log_level(config.log_level),
        "accesslog": None,  # the app logs one line per request itself (serving.access)
        "errorlog": "-",
        "control_socket_disable": True,  # no management socket, no extra master thread
        "pre_fork": _assign_worker_index,
        "post_fork": _enter_worker,
        "proc_name": "serving",
    }


class ServingApplication(BaseApplication):
    """The gunicorn application serving one pipeline."""

    def __init__(self, config: Config, pipeline: Pipeline, plan: DevicePlan) -> None:
        self.config = config
        self.pipeline = pipeline
        self.plan = plan
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.config).items():
            if key in self.cfg.settings:  # options an older gunicorn lacks are skipped
                self.cfg.set(key, value)

    def load(self) -> t.Any:
        app = create_app(self.config, self.pipeline)
        if not self.config.preload:
            threading.Thread(target=self._load_in_worker, name="model-loader", daemon=True).start()
        return app

    def _load_in_worker(self) -> None:
        index = self.pipeline.context.worker_index
        try:
            self.pipeline.load_model()
        except Exception as exc:
            log.exception("worker %s: loading the model failed: %s", index, exc)
            # Exit code 3 tells the master this worker could not boot: it stops the
            # server instead of restarting the worker for ever.
            os._exit(Arbiter.WORKER_BOOT_ERROR)
        log.info("worker %s: model loaded", index)
