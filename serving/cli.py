"""``serve``: read the settings, set up the logs and the metrics directory, and hand them
to the host ``--engine`` names (:mod:`serving.hosts`), which assembles the server
(:mod:`serving.assembly`) and serves it; ``serve batch`` runs a batch transform job."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
import typing as t

from serving.config import Config, ConfigError
from serving.hosts import host_for, make_shared_dir

__all__ = ["main"]

log = logging.getLogger("serving")


def _fail(message: str, code: int) -> t.NoReturn:
    print(f"serve: error: {message}", file=sys.stderr)
    raise SystemExit(code)


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
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["batch"]:  # serve batch INPUT_DIR OUTPUT_DIR: a batch transform job
        from serving.hosts.batch import main as batch_main

        raise SystemExit(batch_main(args[1:]))
    try:
        config = Config.load(argv)
    except ConfigError as exc:
        _fail(str(exc), 2)
    from serving.runtime import logs

    logs.configure(config.log_level, config.log_format)
    if config.ts_config is not None:
        log.info("--ts-config %s: %s%s", config.ts_config,
                 ", ".join(sorted({source[10:] for source in config.sources.values()
                                   if source.startswith("ts-config:")})) or "nothing we read",
                 f"; not used here: {', '.join(config.ts_ignored)}" if config.ts_ignored
                 else "")
    if config.metrics and config.metrics_port == 0:  # --metrics-port auto
        try:
            config = dataclasses.replace(config, metrics_port=_free_port(config))
        except OSError as exc:
            _fail(str(exc), 1)
        log.info("metrics: /metrics on port %d", config.metrics_port)
    # The metrics directory, before any metric exists: every process of the server counts
    # there. Ours unless the operator named one; emptied of any earlier run's files.
    metrics_dir, own_dir = None, False
    if config.metrics:
        metrics_dir = config.metrics_dir
        own_dir = not metrics_dir
        try:
            metrics_dir = metrics_dir or make_shared_dir("serving-metrics-")
            from serving.runtime.metrics import prepare_directory

            prepare_directory(metrics_dir)
        except OSError as exc:  # a read-only filesystem: serve, without metrics
            log.warning("metrics are off: their directory cannot be used (%s); set "
                        "PROMETHEUS_MULTIPROC_DIR to a writable directory", exc)
            config = dataclasses.replace(config, metrics=False)
            metrics_dir, own_dir = None, False
    master = os.getpid()
    try:
        raise SystemExit(host_for(config.engine).run(config, metrics_dir))
    finally:
        # gunicorn's forked workers leave through here too (they raise SystemExit up the
        # stack they were forked in): only the process that made the directory removes it.
        if own_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)  # type: ignore[arg-type]


def _free_port(config: Config) -> int:
    """A port nothing listens on, besides the main one: the first free one of
    SAGEMAKER_SAFE_PORT_RANGE when that is set, else one the kernel picks."""
    import socket

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    first, last = config.safe_port_range or (0, 0)
    for port in range(first, last + 1):
        if port == config.port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As gunicorn binds: a port left in TIME_WAIT by an earlier server is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError(f"--metrics-port auto: no free port in {config.where('safe_port_range')}="
                  f"{first}-{last}" if config.safe_port_range else
                  "--metrics-port auto: no free port")
