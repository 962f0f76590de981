"""Dynamic batching: concurrent requests of one worker joined into one predict call.

Opt-in with ``SERVING_MAX_BATCH_SIZE`` > 1. Each request is still decoded and encoded on
its own runtime thread (under its own deadline); only the predict step comes here. One
batching thread per worker takes the oldest waiting input, gathers more until that one
has waited ``SERVING_MAX_BATCH_DELAY_MS``, joins the inputs that fit together (NumPy arrays of
two or more dimensions with the same dtype and trailing shape) along their first
dimension, calls predict once, and splits the result back by each request's row count.

- **It only waits for requests already inside the worker.** When every request the
  worker holds is in the batch, it runs at once: a lone client pays nothing for batching
  (its request is predicted on its own thread, with no hand-off).
- **It batches only while batching is measured to pay** for this model
  (:mod:`serving.runtime.batch_trial`); otherwise each request is predicted on its own
  thread, as with batching off.
- **One bad request fails only itself.** When a joined call raises, the batch is split
  in halves and each half retried, down to single requests; each request gets its own
  answer or its own error, never its neighbour's.
- **Inputs that cannot be joined are never refused for it**: they run in batches of
  their own, one after another in the same pass.
- **A request past its deadline is left out** of any batch still to run (its client has
  its 504 already).
- A predict whose result does not have one row per input row cannot be split: those
  requests are run one by one instead (logged once).
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

import numpy as np

from serving.errors import DeadlineExceeded
from serving.runtime import logs
from serving.runtime.batch_trial import BatchingTrial

__all__ = ["Batcher", "Items", "Waiting", "batch_key", "batched", "join", "split"]

log = logging.getLogger(__name__)


def batched(fn: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """Mark a ``predict_fn`` as taking a batch: rows of several requests joined along the
    first dimension, and returning one row of output per row of input.

    The same as setting ``predict_fn.batched = True`` by hand. Only used when batching is
    on (``SERVING_MAX_BATCH_SIZE`` > 1); the function is called as usual otherwise.
    """
    fn.batched = True  # type: ignore[attr-defined]
    return fn


class Items(list):  # type: ignore[type-arg]
    """Inputs that are not arrays, one per request row, batched by putting them in one
    list (a TorchServe handler's request list); the predict returns an ``Items`` with one
    answer per input, in order."""


def batch_key(data: t.Any) -> tuple[t.Any, ...] | None:
    """What inputs must share to be joined, or ``None`` when ``data`` cannot be.

    A leading batch dimension means two or more dimensions: a 1-D array is one sample,
    and joining two would make one longer sample. An image as the image decoders give it,
    (height, width, 3) bytes, is one sample too. :class:`Items` join with other Items.
    """
    if isinstance(data, Items):
        return ("items",) if data else None
    if not isinstance(data, np.ndarray) or data.ndim < 2 or data.dtype.kind not in "biuf" \
            or data.shape[0] == 0:
        return None
    if data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3:
        return None
    return (data.dtype.str, data.shape[1:])


def join(inputs: t.Sequence[t.Any]) -> t.Any:
    if len(inputs) == 1:
        return inputs[0]
    if isinstance(inputs[0], Items):
        return Items(item for part in inputs for item in part)
    return np.concatenate(inputs)


def split(output: t.Any, rows: t.Sequence[int]) -> list[t.Any] | None:
    """``output`` cut into one part per request, by row counts; ``None`` when it cannot be:
    not arrays, or not one row per input row. Tuples, lists and dicts of arrays are cut
    member by member."""
    total = sum(rows)
    if isinstance(output, Items):
        if len(output) != total:
            return None
        ends = np.cumsum(rows)
        return [Items(output[end - count:end]) for end, count in zip(ends, rows)]
    if isinstance(output, np.ndarray):
        if output.ndim == 0 or output.shape[0] != total:
            return None
        return np.split(output, np.cumsum(rows)[:-1])
    if isinstance(output, (tuple, list)) and output:
        members = [split(member, rows) for member in output]
        if any(m is None for m in members):
            return None
        return [type(output)(m[i] for m in members) for i in range(len(rows))]  # type: ignore
    if isinstance(output, dict) and output:
        cut = {key: split(value, rows) for key, value in output.items()}
        if any(v is None for v in cut.values()):
            return None
        return [{key: cut[key][i] for key in output} for i in range(len(rows))]  # type: ignore
    return None


class Waiting:
    """One request's input waiting for a batch, and then its share of the answer.

    A subclass that gathers with a loop of its own (the Ray host's, on ``@serve.batch``)
    makes these in its ``submit`` and runs them with :meth:`Batcher._run_batch`."""

    __slots__ = ("data", "key", "rows", "deadline", "queued", "result", "error", "done",
                 "request_id")

    def __init__(self, data: np.ndarray, key: tuple[t.Any, ...], deadline: float) -> None:
        self.data, self.key, self.deadline = data, key, deadline
        self.queued = time.monotonic()
        self.rows = len(data) if isinstance(data, Items) else data.shape[0]
        self.request_id = logs.request_id.get()  # for the log lines of its batch
        self.result: t.Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()

    def finish(self, result: t.Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.release()


class Batcher:
    """One worker's batching thread.

    A request calls :meth:`expect` when it starts decoding, then either :meth:`submit`
    or :meth:`unexpect` (its input cannot be joined, or decoding failed): a batch waits
    for more only while requests are on their way to it.

    :param predict: called with one joined input; returns the joined output.
    :param max_delay: seconds.
    """

    def __init__(self, predict: t.Callable[[np.ndarray], t.Any], *, max_size: int,
                 max_delay: float) -> None:
        self.predict = predict
        self.max_size = max_size
        self.max_delay = max_delay
        self._waiting: list[Waiting] = []
        self._expected = 0  # requests decoding now, which may join a batch
        self._inside = 0  # requests in submit now
        self._busy = False  # a lone request is being predicted on its own thread
        #: Whether batching pays for this model, measured (:mod:`serving.runtime.batch_trial`).
        self.trial = BatchingTrial()
        #: How many clients (connections) the worker holds now; the server sets it. A batch
        #: waits for more while there are clients it does not hold a request of yet: under
        #: load they send their next one within the delay. A lone client never waits.
        self.clients: t.Callable[[], int] = lambda: 0
        #: Called with each batch's request and row counts (the server's metrics).
        self.on_batch: t.Callable[[int, int], None] | None = None
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def wants_threads(self) -> bool:
        """Whether requests are batched now, and so want the threads a gathering batch
        holds (the worker's spare ones); one by one, they do not."""
        return self.trial.batching_now

    def expect(self) -> None:
        """A request started decoding: a batch gathering now may wait for it."""
        with self._cond:
            self._expected += 1

    def unexpect(self) -> None:
        """A request that called :meth:`expect` will not come after all."""
        with self._cond:
            self._expected -= 1
            self._cond.notify()

    def submit(self, data: np.ndarray, key: tuple[t.Any, ...], deadline: float) -> t.Any:
        """Predict ``data`` (whose :func:`batch_key` is ``key``) as part of a batch; the
        request called :meth:`expect` before.

        Blocks until its part of the output is back; raises what its own predict raised.
        While :attr:`trial` finds that batching does not pay, predicts ``data`` here, alone.
        """
        request = Waiting(data, key, deadline)
        with self._cond:
            self._expected -= 1
            self._inside += 1
            batching = self.trial.batching(request.queued, self._inside)
            # A lone client's request, with nothing else here or on its way: nothing to
            # join, so no hand-off to the batching thread and back either.
            lone = batching and self._inside == 1 and not self._waiting \
                and self._expected <= 0 and self.clients() <= 1
            batching = batching and not lone
            if lone:
                self._busy = True  # the batching thread waits for this predict to end
            elif batching:
                if self._thread is None or not self._thread.is_alive():  # first use after fork
                    self._thread = threading.Thread(target=self._run, name="batcher",
                                                    daemon=True)
                    self._thread.start()
                self._waiting.append(request)
                self._cond.notify()
        try:
            if not batching:  # as without batching: on this thread, beside the others
                # Counted and logged as a batch of one, as the metrics have it (the line
                # carries this request's id: it runs in the request's own context).
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("batch of 1 requests, %d rows", request.rows)
                if self.on_batch is not None:
                    self.on_batch(1, request.rows)
                try:
                    return self.predict(data)
                finally:
                    if lone:
                        with self._cond:
                            self._busy = False
                            self._cond.notify()
            request.done.acquire()
            if request.error is not None:
                raise request.error
            return request.result
        finally:
            with self._cond:
                self._inside -= 1
                self.trial.finished(time.monotonic())

    # -- the batching thread ----------------------------------------------------------

    def _gather(self) -> list[Waiting]:
        """The next batch: the oldest waiting request and what joins it within the delay."""
        with self._cond:
            while not self._waiting or self._busy:  # one predict call at a time
                self._cond.wait()
            first = self._waiting[0]
            until = first.queued + self.max_delay  # the oldest has waited since it came
            while True:
                fitting = sum(r.rows for r in self._waiting if r.key == first.key)
                if fitting >= self.max_size:
                    break
                if self._expected <= 0 and self.clients() <= len(self._waiting):
                    break  # no other request on its way, and no other client to send one
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            # The oldest, then whatever has its key, in arrival order, up to max_size rows
            # (a request alone may have more rows than that: it runs alone, never split).
            batch, rows, rest = [], 0, []
            for request in self._waiting:
                if request.key == first.key and (not batch or rows + request.rows
                                                 <= self.max_size):
                    batch.append(request)
                    rows += request.rows
                else:
                    rest.append(request)
            self._waiting = rest
        return batch

    def _run(self) -> None:
        while True:
            self._run_batch(self._gather())

    def _run_batch(self, batch: list[Waiting]) -> None:
        """Predict ``batch``, less the requests already past their deadline; every request
        gets its answer or its error, whatever happens."""
        now = time.monotonic()
        live = []
        for request in batch:
            if request.deadline <= now:  # its client has had its 504
                request.finish(error=DeadlineExceeded(0))
            else:
                live.append(request)
        if live:
            try:
                self._predict(live)
            except BaseException as exc:  # never leave a caller waiting
                for request in live:
                    if request.done.locked():
                        request.finish(error=exc)

    def _predict(self, batch: list[Waiting]) -> None:
        # Log lines of the joined call carry the ids of all its requests.
        token = logs.request_id.set(",".join(r.request_id for r in batch if r.request_id))
        try:
            self._predict_joined(batch)
        finally:
            logs.request_id.reset(token)

    def _predict_joined(self, batch: list[Waiting]) -> None:
        rows = sum(r.rows for r in batch)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch of %d requests, %d rows", len(batch), rows)
        if self.on_batch is not None:
            self.on_batch(len(batch), rows)
        try:
            output = self.predict(join([r.data for r in batch]))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].finish(error=exc)
                return
            # Someone in here made predict fail: halves, until each has its own answer.
            half = len(batch) // 2
            self._predict(batch[:half])
            self._predict(batch[half:])
            return
        parts = split(output, [r.rows for r in batch]) if len(batch) > 1 else [output]
        if parts is None:
            if not self._warned:
                self._warned = True
                log.warning("predict returned %s for a batch of %d rows, not one row per "
                            "input row: running batched requests one by one",
                            type(output).__name__, sum(r.rows for r in batch))
            for request in batch:
                self._predict([request])
            return
        for request, part in zip(batch, parts):
            request.finish(result=part)
