"""gunicorn's own log lines in our layout: here, in the gunicorn host, so that the runtime's
logs (and ``import serving``) do not import gunicorn."""

from __future__ import annotations

import typing as t

from gunicorn import glogging

from serving.runtime import logs

__all__ = ["GunicornLogger"]


class GunicornLogger(glogging.Logger):
    """gunicorn's logger, writing in our layout (``logger_class``)."""

    def setup(self, cfg: t.Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.formatter())
            handler.addFilter(logs.add_fields)
