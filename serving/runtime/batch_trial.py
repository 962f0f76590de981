"""Whether batching pays for this model on this machine, measured by turns while it serves.

Joining requests saves the model's fixed cost per call, but it costs a hand-off to the
batching thread and back, and it serialises the predicts that would otherwise run side by
side. Which wins depends on the model and the machine: on 2 cores, the peers' MLP 2 x 256
served 0.60-0.75 x as many requests always batched as not, the 4 x 2048 MLP 2.2-2.5 x
(BENCHMARKS.md). No static rule (per-row timings of the predict alone included: a small
model's batched row is far cheaper than a row alone, and it still lost) said which; the
outcome does.

So each worker runs a trial as soon as it holds two requests at once: short windows in
turns, batching then one by one (each request predicted on its own thread, as with
batching off), :data:`PAIRS` of each, every window at least :data:`WINDOW_SECONDS` and
:data:`WINDOW_REQUESTS` requests long. It measures the requests answered per second and
the process's CPU time per request in each, and keeps batching when, by the medians,
batching answered more requests per second (by :data:`GAIN`), or as many for less CPU.
Otherwise it predicts one by one. The trial is run again :data:`RETRY_SECONDS` after each
decision, since the load changes (8 clients do not batch like 32), and less often while it
keeps deciding the same (up to :data:`MAX_RETRY_SECONDS`). A later trial whose first pair
confirms the last decision by a wide margin (:data:`CLEAR`) ends there: half of every trial
runs the slower way, and on a model where the two differ by 2 x (the peers' MLP one by one,
the 4 x 2048 MLP batched) three slow windows are about a second at half speed, for an
answer the first pair already gave. A trial whose load goes away (a
window past :data:`ABANDON_SECONDS`) is dropped, and the worker keeps what it did.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
import typing as t

__all__ = ["BatchingTrial"]

log = logging.getLogger(__name__)

#: Windows of each kind in one trial.
PAIRS = 3
#: A window lasts at least this long, and at least this many requests.
WINDOW_SECONDS = 0.25
WINDOW_REQUESTS = 64
#: A window this long without its requests: the load went away, the trial is dropped.
ABANDON_SECONDS = 5.0
#: Seconds between a decision and the next trial; doubled each time a trial decides as
#: the last one did (a trial costs: half its windows run the slower way), up to the most.
RETRY_SECONDS = 60.0
MAX_RETRY_SECONDS = 960.0
#: A later trial ends after its first pair when that pair's rates differ by this factor,
#: the way the last decision went. Not the first trial: its first windows run while the
#: model warms up (TorchScript's profiling runs, first allocations).
CLEAR = 1.5
#: Batching is kept when it answers this much more per second, or as many (within the
#: same margin) for this much less CPU per request.
GAIN = 0.05


@dataclasses.dataclass
class _Window:
    batching: bool
    started: float  # time.monotonic()
    cpu_started: float  # the process's CPU seconds
    requests: int = 0
    rate: float = 0.0  # requests answered per second
    cpu: float = 0.0  # CPU seconds per request


class BatchingTrial:
    """One worker's trial. Not thread-safe: the batcher calls it under its lock.

    :param cpu_clock: the process's CPU seconds (every thread's).
    """

    def __init__(self, cpu_clock: t.Callable[[], float] = time.process_time) -> None:
        self.cpu_clock = cpu_clock
        #: What the last trial decided (batching until one says otherwise).
        self.batching_pays = True
        #: Called with each decision: whether batching pays (the server's metrics).
        self.on_decision: t.Callable[[bool], None] | None = None
        self._windows: list[_Window] | None = None  # the running trial's
        self._next_trial = 0.0
        self._retry = RETRY_SECONDS
        self._last_decision: bool | None = None

    @property
    def running(self) -> bool:
        return self._windows is not None

    @property
    def batching_now(self) -> bool:
        """Whether requests are batched now (in a trial: in this window)."""
        windows = self._windows
        return self.batching_pays if windows is None else windows[-1].batching

    def batching(self, now: float, inside: int) -> bool:
        """Whether the request arriving now (``inside``: requests in the batcher, it among
        them) is batched; starts a trial when one is due and the load is concurrent."""
        if self._windows is None:
            if inside < 2 or now < self._next_trial:
                return self.batching_pays
            self._windows = [self._window(self.batching_pays, now)]
        return self._windows[-1].batching

    def finished(self, now: float) -> None:
        """A request got its answer (or its error)."""
        windows = self._windows
        if windows is None:
            return
        window = windows[-1]
        window.requests += 1
        elapsed = now - window.started
        if elapsed > ABANDON_SECONDS:
            self._windows = None
            self._next_trial = now + RETRY_SECONDS
            log.info("batching trial dropped: the load went away")
            return
        if elapsed < WINDOW_SECONDS or window.requests < WINDOW_REQUESTS:
            return
        window.rate = window.requests / elapsed
        window.cpu = (self.cpu_clock() - window.cpu_started) / window.requests
        if len(windows) < 2 * PAIRS and not self._confirmed(windows):
            windows.append(self._window(not window.batching, now))
            return
        same = self._decide(windows)
        self._retry = min(2 * self._retry, MAX_RETRY_SECONDS) if same else RETRY_SECONDS
        self._windows = None
        self._next_trial = now + self._retry

    def _window(self, batching: bool, now: float) -> _Window:
        return _Window(batching, now, self.cpu_clock())

    def _confirmed(self, windows: list[_Window]) -> bool:
        """Whether a later trial's first pair, just measured, confirms the last decision
        clearly enough to end the trial."""
        if len(windows) != 2 or self._last_decision is None:
            return False
        batched, alone = (windows if windows[0].batching else windows[::-1])
        if self._last_decision:
            return batched.rate >= CLEAR * alone.rate
        return alone.rate >= CLEAR * batched.rate

    def _decide(self, windows: list[_Window]) -> bool:
        """Decide from a trial's windows; whether it decided as the last one did."""
        batched = [w for w in windows if w.batching]
        alone = [w for w in windows if not w.batching]
        rate_b = statistics.median(w.rate for w in batched)
        rate_a = statistics.median(w.rate for w in alone)
        cpu_b = statistics.median(w.cpu for w in batched)
        cpu_a = statistics.median(w.cpu for w in alone)
        pays = rate_b >= (1 + GAIN) * rate_a \
            or (rate_b >= (1 - GAIN) * rate_a and cpu_b <= (1 - GAIN) * cpu_a)
        log.info("batching trial, %d windows of each: batched %.0f req/s at %.3f ms CPU "
                 "each, one by one %.0f req/s at %.3f ms: %s", len(batched), rate_b,
                 cpu_b * 1e3, rate_a, cpu_a * 1e3,
                 "batching" if pays else "predicting one by one")
        same = pays == self._last_decision
        self._last_decision = self.batching_pays = pays
        if self.on_decision is not None:
            self.on_decision(pays)
        return same
