"""``serve``: read the settings, prepare the user's code and model, start gunicorn."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing as t

from serving.config import Config, ConfigError, cpu_count
from serving.errors import StartupError

__all__ = ["main"]

log = logging.getLogger("serving")

# gunicorn's own layout, so that its lines and ours read as one log.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def _fail(message: str, code: int) -> t.NoReturn:
    print(f"serve: error: {message}", file=sys.stderr)
    raise SystemExit(code)


#: Thread-count variables of the math libraries frameworks use, read when each starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_CPU_WORKER_NTHREADS")


def _prepare_environment(threads_per_worker: int) -> None:
    """Variables the frameworks read when they start, set before any of them is imported.

    Workers share the CPUs: each library gets about cores / workers threads unless
    the user set its variable. Chainer 7's import-time check needs the standard
    library's distutils (setuptools >= 60 would hide it).
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads_per_worker))
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")


def main(argv: t.Sequence[str] | None = None) -> None:
    try:
        config = Config.load(argv)
    except ConfigError as exc:
        _fail(str(exc), 2)
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT,
                        stream=sys.stderr)

    # Imported here so that `serve --help` and setting errors stay fast.
    from handlers.content import PluginError, default_registry
    from serving.devices import gpu_count, plan_devices
    from serving.pipeline import Pipeline
    from serving.server import ServingApplication
    from serving.user_code import import_user_module, install_requirements, locate_user_script

    try:
        plan = plan_devices(config, gpu_count(), cpu_count())
        # GPU serving loads per worker after fork, one worker per GPU by default.
        config = dataclasses.replace(config, workers=plan.workers,
                                     preload=config.preload and plan.kind == "cpu")
        log.info("devices: %s, %d worker(s), %d thread(s) each%s", plan.kind, plan.workers,
                 plan.threads_per_worker, f", GPUs {list(plan.gpus)}" if plan.gpus else "")
        _prepare_environment(plan.threads_per_worker)
        registry = default_registry()  # built-in handlers and installed plugins, once
        script = locate_user_script(config)
        module = None
        if script is not None:
            if config.install_requirements:
                install_requirements(script)
            module = import_user_module(script)
        else:
            log.info("no user script found; serving with the default handlers")
        pipeline = Pipeline.from_module(
            module, registry, model_dir=config.model_dir, default_accept=config.default_accept,
            framework=config.framework, trust_pickled_models=config.trust_pickled_models,
        )
        if config.preload:
            pipeline.load_model()
    except (StartupError, PluginError) as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # model_fn failed: the traceback is the user's best clue
        log.exception("loading the model failed")
        _fail(f"loading the model failed: {type(exc).__name__}: {exc}", 1)

    ServingApplication(config, pipeline, plan).run()
