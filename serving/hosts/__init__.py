"""The hosts: what brings requests to an assembled server (:mod:`serving.assembly`).

- :mod:`serving.hosts.gunicorn`: ``serve`` (``--engine gunicorn``, the default): a master
  and forked workers on one machine.
- :mod:`serving.hosts.ray`: ``serve --engine ray``: Ray Serve replicas, on one machine or a
  cluster.
- :mod:`serving.hosts.batch`: ``serve batch IN OUT``: a batch transform job over files, no
  HTTP (a job with its own command line, built from the same assembly).

A server host is a module with ``run(config, metrics_dir) -> exit status`` (:class:`Host`):
``serve`` reads the settings and prepares the logs and the metrics directory once, then
hands them to the host ``--engine`` names. Every host builds its parts with
:func:`serving.assembly.build.assemble` and calls the Flask app through
:mod:`serving.http.bridge`, so that a request gets the same answer whichever host took it.
A new host is one module here and one line in :data:`serving.config.ENGINES`, which says
what it can carry (the settings check against it).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import typing as t

from serving.config import ENGINES, Config

__all__ = ["Host", "host_for", "make_shared_dir"]


class Host(t.Protocol):
    """What ``serve`` hands a server to."""

    def run(self, config: Config, metrics_dir: str | None) -> int:
        """Serve until stopped; the exit status.

        :param metrics_dir: the multiprocess metrics directory, made ready by ``serve``
            (``None`` when metrics are off); every process of the server counts there.
        """


def host_for(engine: str) -> Host:
    """The host of ``--engine``, imported only now (Ray only when it is chosen)."""
    return t.cast(Host, importlib.import_module(ENGINES[engine].module))


def make_shared_dir(prefix: str) -> str:
    """A fresh directory a server's processes share files in: in shared memory when there
    is some (writes to its memory maps never reach a disk), else the temporary directory."""
    for parent in ("/dev/shm", None):
        if parent is None or os.access(parent, os.W_OK):
            try:
                return tempfile.mkdtemp(prefix=prefix, dir=parent)
            except OSError:
                continue
    raise OSError("no writable temporary directory")
