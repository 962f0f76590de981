"""Prometheus metrics, added up across every gunicorn worker.

Each worker is its own process, so each counts in its own files under one
directory (prometheus_client's multiprocess mode), and ``GET /metrics`` reads
them all. ``serve`` owns that directory: ``PROMETHEUS_MULTIPROC_DIR`` when set,
else a fresh temporary one; its files are deleted at start, so a restarted
container never reports the last run's counts.

prometheus_client leaves a dead process's counter and histogram files in the
directory for ever (``mark_process_dead`` only removes live gauges), so a
server whose workers are replaced now and then grows a file set without
bound, and every scrape reads more. Here the master folds a dead worker's
counters and histograms into one ``*_archive.db`` file per type and deletes
that worker's files (:func:`retire_process`): the files are at most
(live processes + 1) per type, and no count goes backwards. A scrape holds a
shared lock on the directory and the fold an exclusive one, so no scrape sees a
worker counted twice or not at all.

Counting is buffered: a request adds to plain dicts under one lock (about a
microsecond), and :meth:`Metrics.flush` writes the sums to the files, where a
file write costs about as much per value. Each worker flushes on its loop's
tick (four times a second), before it answers a scrape, and when it exits, so
a scrape is at most a quarter of a second behind, and a worker killed with
SIGKILL loses at most its last quarter second of counts. Written at once, a
request's dozen writes cost 13 % of an echo model's requests/s (0.87 × metrics
off; buffered: 0.92-0.95 ×, BENCHMARKS.md "Observability").

Without a directory (the app built in a test, without ``serve``) the metrics
count in this process only.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import glob
import os
import threading
import typing as t

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "Metrics", "prepare_directory", "retire_process"]

#: The media type of ``GET /metrics`` (Prometheus text format 0.0.4).
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
#: Where the directory comes from when the operator names one.
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: The lock a scrape shares and the master's fold of a dead worker takes alone.
LOCK_NAME = ".lock"
#: Labels for a route no rule matched (404s, requests refused before routing).
NO_ROUTE = "none"
#: Content-Type label of a request without a body, and of types past the bound below.
NO_CONTENT_TYPE, OTHER_CONTENT_TYPE = "", "other"
#: A pipeline whose input_fn takes any Content-Type labels the first this many types it
#: sees by name; later ones are "other", so that a client cannot grow the series count.
MAX_CONTENT_TYPE_LABELS = 32

# Buckets. Latency: 1 ms … 60 s. Bodies: 100 B … 100 MiB. Batches: 1 … 512.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
BYTES_BUCKETS = (100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Streams: 1 s … 1 h.
STREAM_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600)
#: Close codes a stream's metrics name; any other (a client's own) counts as "other".
STREAM_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013})


def prepare_directory(path: str) -> None:
    """Make ``path`` the metrics directory of this process and its children, emptied of
    the files of any earlier run. Call before any metric is made."""
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
    os.environ[DIRECTORY_VARIABLE] = path
    # prometheus_client chooses its value class when it is first imported; serve may have
    # imported it before it knew the directory.
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue()


def join_directory(path: str) -> None:
    """Count in the metrics directory ``path`` that another process prepared (Ray Serve
    replicas share the one their driver made), keeping the files already there."""
    os.makedirs(path, exist_ok=True)  # another node of a cluster: its own, same name
    os.environ[DIRECTORY_VARIABLE] = path
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue()


@contextlib.contextmanager
def _locked(path: str, exclusive: bool) -> t.Iterator[None]:
    with open(os.path.join(path, LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def retire_process(path: str, pid: int) -> None:
    """A process of the server is gone: fold its counters and histograms into the
    archive files, and delete every file it had (its live gauges with it).

    Runs in the gunicorn master (``child_exit``), the archive's only writer.
    """
    with _locked(path, exclusive=True):
        for kind in ("counter", "histogram"):
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(path, f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
        multiprocess.mark_process_dead(pid, path)  # its live gauges (in flight)
        for name in glob.glob(os.path.join(path, f"*_{pid}.db")):  # and all the rest
            os.remove(name)


#: The most (model, metric, unit, type) series of TorchServe handlers' metrics per process.
MAX_HANDLER_METRICS = 100


class Metrics:
    """The server's metrics, and the methods the app, the worker loop, the pipeline and
    the master call to count. Names follow Prometheus conventions: ``_total`` counters,
    ``_seconds`` and ``_bytes`` units, a ``serving_`` prefix."""

    def __init__(self, directory: str | None = None,
                 content_types: t.Iterable[str] | None = None) -> None:
        """:param directory: the multiprocess directory (made by
            :func:`prepare_directory`); ``None``: this process only.
        :param content_types: the request types the pipeline decodes, each labelled by
            name; ``None`` when user code decodes any type (the first
            ``MAX_CONTENT_TYPE_LABELS`` seen are labelled by name).
        """
        self.directory = directory
        # Metrics made for the multiprocess directory belong to no registry: a scrape
        # reads the files. Otherwise they count in a registry of this object's own (two
        # apps in one test process must not collide in the global one).
        self._registry = CollectorRegistry(auto_describe=True)
        own = None if directory else self._registry
        self._known_types = set(content_types) if content_types is not None else None
        self._seen_types: set[str] = set()
        self._lock = threading.Lock()

        self.requests = Counter(
            "serving_requests", "Requests answered, by route, status code and request "
            "Content-Type.", ["route", "status", "content_type"], registry=own)
        self.request_seconds = Histogram(
            "serving_request_duration_seconds", "Time from a request's arrival to its answer, "
            "by route.", ["route"], buckets=LATENCY_BUCKETS, registry=own)
        self.stage_seconds = Histogram(
            "serving_stage_duration_seconds", "Time in each stage of an invocation: decode "
            "(input_fn or the content handler), predict (predict_fn, the framework or "
            "transform_fn, with any wait for a batch), encode (output_fn or the content "
            "handler).", ["stage"], buckets=LATENCY_BUCKETS,
            registry=own)
        self.in_flight = Gauge(
            "serving_requests_in_flight", "Requests being answered now (each worker's count, "
            "taken four times a second).",
            multiprocess_mode="livesum", registry=own)
        self.request_bytes = Histogram(
            "serving_request_body_bytes", "Size of invocation request bodies.",
            buckets=BYTES_BUCKETS, registry=own)
        self.response_bytes = Histogram(
            "serving_response_body_bytes", "Size of invocation response bodies.",
            buckets=BYTES_BUCKETS, registry=own)
        self.batch_requests = Histogram(
            "serving_batch_requests", "Requests joined in each predict call of the dynamic "
            "batcher.", buckets=BATCH_BUCKETS, registry=own)
        self.batch_rows = Histogram(
            "serving_batch_rows", "Rows in each predict call of the dynamic batcher.",
            buckets=BATCH_BUCKETS, registry=own)
        self.batching_trials = Counter(
            "serving_batching_trials", "Trials of whether batching pays for the model (a "
            "worker's batching against one by one, in turns), by what each decided: batch "
            "or alone.", ["decision"], registry=own)
        self.model_load_seconds = Gauge(
            "serving_model_load_seconds", "How long loading the model took (model_fn or the "
            "framework's loader); the longest across workers.", multiprocess_mode="max",
            registry=own)
        self.worker_restarts = Counter(
            "serving_worker_restarts", "Workers started to replace one that exited (crashed, "
            "killed, or retired after a stuck prediction).", registry=own)
        self.deadline_exceeded = Counter(
            "serving_deadline_exceeded", "Requests answered 504: past SERVING_REQUEST_TIMEOUT.",
            registry=own)
        self.slow_clients = Counter(
            "serving_slow_clients_refused", "Connections answered 408 and closed: headers not "
            "in SERVING_HEADER_TIMEOUT, or a body slower than SERVING_MIN_BODY_RATE_KB.",
            ["phase"], registry=own)
        self.streams_open = Gauge(
            "serving_streams_open", "Bidirectional streams (WebSockets) open now (each "
            "worker's count, taken four times a second).", multiprocess_mode="livesum",
            registry=own)
        self.streams_closed = Counter(
            "serving_streams_closed", "Bidirectional streams ended, by their close code (1000 "
            "done, 1001 the server stopping, 1006 the connection lost, 1008 a limit or a bad "
            "message, 1009 a message too big, 1011 a model failure, ...).", ["code"],
            registry=own)
        self.stream_messages = Counter(
            "serving_stream_messages", "Messages of bidirectional streams, by direction: in "
            "(from the client) or out.", ["direction"], registry=own)
        self.stream_seconds = Histogram(
            "serving_stream_duration_seconds", "How long each bidirectional stream was open.",
            buckets=STREAM_BUCKETS, registry=own)
        self.handler_metrics = Summary(
            "serving_handler_metric", "What TorchServe handlers report through "
            "context.metrics (add_time, add_counter, add_size, ...): the count and sum of "
            "the values, by model, metric, unit and TorchServe's type (COUNTER, GAUGE, "
            "HISTOGRAM); at most 100 of them a worker.",
            ["model", "metric", "unit", "type"], registry=own)
        # Children by label values, made once: .labels() takes a lock and hashes each time.
        self._children: dict[tuple[t.Any, ...], t.Any] = {}
        # What was counted since the last flush: counter → amount; histogram →
        # [sum, count per bucket] (not cumulative, as prometheus_client stores them).
        self._counts: dict[t.Any, float] = {}
        self._observations: dict[t.Any, list[t.Any]] = {}
        self._pending_lock = threading.Lock()

    def _child(self, metric: t.Any, *values: str) -> t.Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def content_type_label(self, content_type: str | None) -> str:
        """The label for a request's Content-Type, from a bounded set of values."""
        if not content_type:
            return NO_CONTENT_TYPE
        if self._known_types is not None:
            return content_type if content_type in self._known_types else OTHER_CONTENT_TYPE
        if content_type in self._seen_types:
            return content_type
        with self._lock:
            if len(self._seen_types) < MAX_CONTENT_TYPE_LABELS:
                self._seen_types.add(content_type)
                return content_type
        return OTHER_CONTENT_TYPE

    # -- buffering --------------------------------------------------------------------

    def _count(self, counter: t.Any, amount: float = 1.0) -> None:
        with self._pending_lock:
            self._counts[counter] = self._counts.get(counter, 0.0) + amount

    def _observe(self, histogram: t.Any, value: float) -> None:
        bounds = histogram._upper_bounds  # ends with +Inf
        bucket = bisect.bisect_left(bounds, value)  # the first bound >= value
        with self._pending_lock:
            pending = self._observations.get(histogram)
            if pending is None:
                pending = self._observations[histogram] = [0.0, [0] * len(bounds)]
            pending[0] += value
            pending[1][bucket] += 1

    def flush(self) -> None:
        """Write what was counted since the last flush to the metric values (the files)."""
        with self._pending_lock:
            counts, self._counts = self._counts, {}
            observations, self._observations = self._observations, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, (total, buckets) in observations.items():
            # What Histogram.observe does per value, once for the lot.
            histogram._sum.inc(total)
            for value, count in zip(histogram._buckets, buckets):
                if count:
                    value.inc(count)

    # -- what is counted --------------------------------------------------------------

    def request_done(self, route: str, status: int, content_type: str | None,
                     seconds: float) -> None:
        self._count(self._child(self.requests, route, str(status),
                                self.content_type_label(content_type)))
        self._observe(self._child(self.request_seconds, route), seconds)
        if status == 504:
            self._count(self.deadline_exceeded)

    def request_refused(self, route: str, status: int, content_type: str | None,
                        slow_phase: str | None = None) -> None:
        """A request the worker loop answered with an error before the app saw it."""
        self._count(self._child(self.requests, route, str(status),
                                self.content_type_label(content_type)))
        if slow_phase is not None:
            self._count(self._child(self.slow_clients, slow_phase))

    def stage(self, stage: str, seconds: float) -> None:
        self._observe(self._child(self.stage_seconds, stage), seconds)

    def bodies(self, request_bytes: int, response_bytes: int | None) -> None:
        self._observe(self.request_bytes, request_bytes)
        if response_bytes is not None:
            self._observe(self.response_bytes, response_bytes)

    def batch(self, requests: int, rows: int) -> None:
        self._observe(self.batch_requests, requests)
        self._observe(self.batch_rows, rows)

    def stream_closed(self, code: int, messages_in: int, messages_out: int,
                      seconds: float) -> None:
        self._count(self._child(self.streams_closed,
                                str(code) if code in STREAM_CLOSE_CODES else "other"))
        self._count(self._child(self.stream_messages, "in"), messages_in)
        self._count(self._child(self.stream_messages, "out"), messages_out)
        self._observe(self.stream_seconds, seconds)

    def handler_metric(self, model: str, metric: str, unit: str, kind: str,
                       value: float) -> None:
        """A TorchServe handler's metric update; the 101st distinct series of this
        process, and every one after it, is left out (a handler's names are its own)."""
        key = (self.handler_metrics, model, metric, unit, kind)
        if key not in self._children:
            with self._lock:
                if sum(1 for k in self._children if k[0] is self.handler_metrics) \
                        >= MAX_HANDLER_METRICS:
                    return
        self._child(self.handler_metrics, model, metric, unit, kind).observe(value)

    def batching_trial(self, pays: bool) -> None:
        self._count(self._child(self.batching_trials, "batch" if pays else "alone"))

    # -- exposition -------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric of every process of the server, in the Prometheus text format."""
        self.flush()
        if self.directory is None:
            return prometheus_client.generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        with _locked(self.directory, exclusive=False):
            return prometheus_client.generate_latest(registry)


#: Where this process counts the metrics model code reports (a TorchServe handler's own):
#: the :class:`Metrics` the app counts into, set by :func:`count_model_metrics`; ``None``:
#: nowhere. One a process, as the metrics are.
_model_metric_sink: t.Callable[[str, str, str, str, float], None] | None = None


def count_model_metrics(metrics: Metrics | None) -> None:
    """Count the metrics model code reports in ``metrics`` from now on (``None``: stop)."""
    global _model_metric_sink
    _model_metric_sink = metrics.handler_metric if metrics is not None else None


def report_model_metric(model: str, metric: str, unit: str, kind: str, value: float) -> None:
    """One metric update from ``model``'s code, counted where :func:`count_model_metrics`
    said."""
    sink = _model_metric_sink
    if sink is not None:
        sink(model, metric, unit, kind, value)
