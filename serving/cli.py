"""``serve``: read the settings, prepare the user's code and model, start gunicorn."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import typing as t

from serving.config import Config, ConfigError, cpu_count
from serving.errors import StartupError

__all__ = ["main"]

log = logging.getLogger("serving")


def _fail(message: str, code: int) -> t.NoReturn:
    print(f"serve: error: {message}", file=sys.stderr)
    raise SystemExit(code)


#: Thread-count variables of the math libraries frameworks use, read when each starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_CPU_WORKER_NTHREADS")


def _set_thread_variables(threads_per_worker: int) -> None:
    """Workers share the CPUs: each math library gets about cores / workers threads.

    Set before any framework is imported (they read these when they start), unless
    the user set them.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads_per_worker))


def _reexec_for_chainer(argv: t.Sequence[str] | None) -> None:
    """Start again with ``SETUPTOOLS_USE_DISTUTILS=stdlib`` when Chainer is installed.

    Chainer 7's import-time check imports ``numpy.distutils``, which needs the
    standard library's distutils; setuptools >= 60 hides it behind a shim that it
    installs at interpreter start, so the variable must be set before this
    process began. Costs one interpreter start, only where Chainer is installed.
    """
    if "SETUPTOOLS_USE_DISTUTILS" in os.environ or importlib.util.find_spec("chainer") is None:
        return
    args = list(sys.argv[1:] if argv is None else argv)
    # Start the way this process was started: the `serve` script, or `python -m serving`.
    script = sys.argv[0]
    how = ["-m", "serving"] if script.endswith("__main__.py") else [script]
    os.execve(sys.executable, [sys.executable, *how, *args],
              {**os.environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"})


def main(argv: t.Sequence[str] | None = None) -> None:
    _reexec_for_chainer(argv)
    try:
        config = Config.load(argv)
    except ConfigError as exc:
        _fail(str(exc), 2)
    from serving import logs

    logs.configure(config.log_level, config.log_format)
    # The metrics directory, before any metric exists: every process of the server counts
    # there. Ours unless the operator named one; emptied of any earlier run's files.
    metrics_dir, own_dir = None, False
    if config.metrics:
        metrics_dir = config.metrics_dir
        own_dir = not metrics_dir
        try:
            metrics_dir = metrics_dir or _make_metrics_dir()
            from serving.metrics import prepare_directory

            prepare_directory(metrics_dir)
        except OSError as exc:  # a read-only filesystem: serve, without metrics
            log.warning("metrics are off: their directory cannot be used (%s); set "
                        "PROMETHEUS_MULTIPROC_DIR to a writable directory", exc)
            config = dataclasses.replace(config, metrics=False)
            metrics_dir, own_dir = None, False
    master = os.getpid()
    try:
        _serve(config, metrics_dir)
    finally:
        # Workers leave through here too (gunicorn's forked children raise SystemExit up
        # the stack they were forked in): only the master removes the directory.
        if own_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)  # type: ignore[arg-type]


def _make_metrics_dir() -> str:
    """A fresh directory for the workers' metric files: in shared memory when there is
    some (writes to its memory maps never reach a disk), else the temporary directory."""
    for parent in ("/dev/shm", None):
        if parent is None or os.access(parent, os.W_OK):
            try:
                return tempfile.mkdtemp(prefix="serving-metrics-", dir=parent)
            except OSError:
                continue
    raise OSError("no writable temporary directory")


def _serve(config: Config, metrics_dir: str | None) -> None:

    # Imported here so that `serve --help` and setting errors stay fast.
    from handlers.content import PluginError, default_registry
    from serving.devices import gpu_count, plan_devices
    from serving.metrics import Metrics
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
        _set_thread_variables(plan.threads_per_worker)
        registry = default_registry()  # built-in handlers and installed plugins, once
        script = locate_user_script(config)
        module = None
        if script is not None:
            if config.install_requirements:
                install_requirements(script)
            module = import_user_module(script)
        else:
            log.info("no user script found; serving with the default handlers")
        # After the user's module, whose own handlers get the limit too.
        registry.limit_decoded(config.max_decoded_bytes)
        pipeline = Pipeline.from_module(
            module, registry, model_dir=config.model_dir, default_accept=config.default_accept,
            framework=config.framework, trust_pickled_models=config.trust_pickled_models,
            debug_errors=config.debug_errors,
        )
        if config.batching:
            pipeline.enable_batching(config.max_batch_size, config.max_batch_delay_ms / 1000)
        metrics = Metrics(metrics_dir, content_types=pipeline.input_types) \
            if config.metrics else None
        if config.preload:
            pipeline.load_model()
            if metrics is not None and pipeline.load_seconds is not None:
                metrics.model_load_seconds.set(pipeline.load_seconds)
    except (StartupError, PluginError) as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # model_fn failed: the traceback is the user's best clue
        log.exception("loading the model failed")
        _fail(f"loading the model failed: {type(exc).__name__}: {exc}", 1)

    ServingApplication(config, pipeline, plan, metrics).run()
