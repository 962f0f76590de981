"""What every log line carries: the request it belongs to, the worker, and its layout.

A request's id lives in a context variable. The HTTP thread sets it, the
runtime runs the request's job in a copy of that context (so the prediction
thread has it), and the batcher sets the ids of every request in a batch
around the joined call. A filter on our handlers (:func:`add_fields`) stamps
each record with the id and the worker index as the line is written, so every
line a request causes carries its id: ours, gunicorn's, and the user's own
``logging`` calls.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import re
import sys
import traceback
import typing as t

import orjson

__all__ = ["JsonFormatter", "access_line", "access_log", "add_fields", "configure",
           "new_request_id", "request_id", "valid_request_id"]

#: One line a request, whatever protocol carried it (:func:`access_line`).
access_log = logging.getLogger("serving.access")

#: The id of the request this thread (or context) works for; "" outside requests.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

#: This process's worker index; None in the master. Set after fork.
worker_index: int | None = None

#: gunicorn's own layout, with the request id (``-`` outside requests).
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

#: Ids taken from a client are kept only when they are short, visible ASCII: they go into
#: log lines and response headers, where anything else could forge lines or headers.
MAX_REQUEST_ID = 200
_VALID_ID = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)

#: Record attributes the JSON layout adds when a line has them (access lines do).
EXTRA_FIELDS = ("status", "latency_ms", "method", "path", "remote")


def new_request_id() -> str:
    """128 random bits in hex, as ``uuid4().hex`` but without its object (4 × cheaper)."""
    return os.urandom(16).hex()


def valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID_ID.fullmatch(value) is not None


def add_fields(record: logging.LogRecord) -> bool:
    """A filter on our handlers: the request id and worker of the line, unless the code
    that logged it gave its own in ``extra``.

    A filter, not a record factory: a factory puts the attributes on every record made in
    the process, and ``extra`` may then not name them (Ray Serve logs with its own
    ``request_id``, which logging refuses to overwrite). Handlers run in the thread that
    logs, so the request id is still the one of that thread's request.
    """
    if not hasattr(record, "request_id"):
        record.request_id = request_id.get() or "-"
    if not hasattr(record, "worker"):
        record.worker = worker_index
    return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, request_id,
    worker, pid, and the access line's fields; ``exception`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, t.Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            line["request_id"] = rid
        line["worker"] = getattr(record, "worker", None)
        line["pid"] = record.process
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


_format = "text"


def formatter() -> logging.Formatter:
    if _format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT)


def configure(level: int, log_format: str = "text") -> None:
    """Set up this process's logging: one handler on stderr, in ``log_format``."""
    global _format
    _format = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    handler.addFilter(add_fields)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def access_line(level: int, message: str, *args: object,
                fields: dict[str, t.Any] | None = None) -> None:
    """One access line: the record ``logging.log`` makes, without its walk up the stack to
    find the caller (a third of its cost, paid on every request; the caller is known).

    :param fields: record attributes for structured logs (status, latency_ms, …).
    """
    access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, message, args,
                                            None, extra=fields))
