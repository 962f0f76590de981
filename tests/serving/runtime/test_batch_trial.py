"""The batching trial on its own: windows in turns, and what it decides from them."""

from __future__ import annotations

import pytest

from serving.runtime import batch_trial
from serving.runtime.batch_trial import (
    ABANDON_SECONDS,
    MAX_RETRY_SECONDS,
    PAIRS,
    RETRY_SECONDS,
    WINDOW_REQUESTS,
    WINDOW_SECONDS,
    BatchingTrial,
)


class Load:
    """Requests through a trial on made-up clocks: each mode has its own rate and CPU."""

    def __init__(self, trial: BatchingTrial, batched: tuple[float, float],
                 alone: tuple[float, float]) -> None:
        self.trial, self.now, self.cpu = trial, 100.0, 0.0
        self.costs = {True: batched, False: alone}  # (requests per second, CPU s each)
        trial.cpu_clock = lambda: self.cpu
        self.modes: list[bool] = []

    def run(self, requests: int) -> None:
        for _ in range(requests):
            batching = self.trial.batching(self.now, inside=2)
            if not self.modes or self.modes[-1] != batching:
                self.modes.append(batching)
            rate, cpu = self.costs[batching]
            self.now += 1 / rate
            self.cpu += cpu
            self.trial.finished(self.now)


def decided(batched, alone):
    trial = BatchingTrial()
    decisions = []
    trial.on_decision = decisions.append
    load = Load(trial, batched, alone)
    load.run(2 * PAIRS * max(WINDOW_REQUESTS, 2000))
    return trial, load, decisions


def test_a_model_batching_serves_faster_keeps_batching():
    trial, load, decisions = decided(batched=(2500, 0.0004), alone=(1000, 0.0010))
    assert decisions == [True] and trial.batching_pays
    # It tried both, in turns, PAIRS windows of each, starting with what it did.
    assert load.modes[:2 * PAIRS] == [True, False] * PAIRS


def test_a_model_batching_does_not_help_is_predicted_one_by_one():
    trial, load, decisions = decided(batched=(800, 0.0007), alone=(1000, 0.0005))
    assert decisions == [False] and not trial.batching_pays
    assert load.modes[-1] is False  # after the trial, one by one


def test_as_fast_for_less_cpu_keeps_batching_and_as_fast_for_more_does_not():
    assert decided(batched=(1000, 0.0004), alone=(1010, 0.0005))[2] == [True]
    assert decided(batched=(1000, 0.0005), alone=(1010, 0.0005))[2] == [False]


def test_it_waits_for_concurrent_load_and_tries_again_later():
    trial = BatchingTrial(cpu_clock=lambda: 0.0)
    assert trial.batching(0.0, inside=1) and not trial.running  # a lone request: no trial
    load = Load(trial, batched=(800, 0.0007), alone=(1000, 0.0005))
    load.run(2 * PAIRS * 2000)
    assert not trial.batching_pays and not trial.running
    assert not trial.batching(load.now + 1, inside=2) and not trial.running
    assert not trial.batching(load.now + RETRY_SECONDS + 1, inside=2)  # one-by-one window...
    assert trial.running  # ... of the next trial, which starts with what it does now


def test_a_window_lasts_its_time_and_its_requests():
    trial = BatchingTrial(cpu_clock=lambda: 0.0)
    trial.batching(0.0, inside=2)
    for i in range(WINDOW_REQUESTS + 10):  # all within a tenth of the window's time
        trial.finished(i * WINDOW_SECONDS / 10 / WINDOW_REQUESTS)
    assert trial.batching(0.01, inside=2)  # still the first window
    trial.finished(WINDOW_SECONDS + 0.01)
    assert not trial.batching(WINDOW_SECONDS + 0.02, inside=2)  # the second: one by one


def test_a_trial_whose_load_goes_away_is_dropped(caplog):
    caplog.set_level("INFO", logger=batch_trial.__name__)
    trial = BatchingTrial(cpu_clock=lambda: 0.0)
    trial.batching_pays = False
    trial.batching(0.0, inside=2)
    trial.finished(ABANDON_SECONDS + 1)
    assert not trial.running and not trial.batching_pays  # keeps what it did
    assert "dropped" in caplog.text


@pytest.mark.parametrize("pays", [True, False])
def test_each_decision_is_logged_with_its_figures(caplog, pays):
    caplog.set_level("INFO", logger=batch_trial.__name__)
    decided(batched=(2500, 0.0004), alone=(1000, 0.001)) if pays else \
        decided(batched=(800, 0.0007), alone=(1000, 0.0005))
    assert ("predicting one by one" in caplog.text) is not pays
    assert "req/s" in caplog.text


def test_trials_that_keep_deciding_the_same_come_less_often():
    trial = BatchingTrial()
    load = Load(trial, batched=(800, 0.0007), alone=(1000, 0.0005))
    gaps, last = [], None
    for _ in range(6):
        while not trial.batching(load.now, inside=2) and not trial.running:
            load.now += 1.0  # idle seconds until the next trial is due
        started = load.now
        load.run(2 * PAIRS * 2000)  # the whole trial, then one by one
        if last is not None:
            gaps.append(round(started - last))
        last = started
    assert gaps[0] >= RETRY_SECONDS and gaps[1] >= 2 * RETRY_SECONDS
    assert gaps[-1] <= MAX_RETRY_SECONDS + 30 and gaps[-1] >= MAX_RETRY_SECONDS / 2


def retrial_modes(batched, alone, then=None):
    """The modes of the trial after the first one, and the decisions of both; ``then``:
    the (batched, alone) costs by the second trial, when the load changed."""
    trial, load, decisions = decided(batched, alone)
    if then is not None:
        load.costs = {True: then[0], False: then[1]}
    load.now += RETRY_SECONDS + 1
    load.modes = []
    load.run(2 * PAIRS * 2000)
    return load.modes, decisions


@pytest.mark.parametrize("batched, alone, pays", [
    ((2500, 0.0004), (1000, 0.0010), True),  # batched 2.5 x
    ((500, 0.0010), (1000, 0.0005), False),  # one by one 2 x
])
def test_a_later_trial_whose_first_pair_confirms_clearly_ends_there(batched, alone, pays):
    modes, decisions = retrial_modes(batched, alone)
    # One window of each, then what it decided again: not PAIRS slow windows.
    assert modes == [pays, not pays, pays]
    assert decisions == [pays, pays]


def test_a_later_trial_within_the_margin_runs_every_pair():
    modes, decisions = retrial_modes(batched=(800, 0.0007), alone=(1000, 0.0005))  # 1.25 x
    assert modes[:2 * PAIRS] == [False, True] * PAIRS and modes[-1] is False
    assert decisions == [False, False]


def test_a_later_trial_that_contradicts_the_last_decision_runs_every_pair():
    modes, decisions = retrial_modes(batched=(2500, 0.0004), alone=(1000, 0.0010),
                                     then=((500, 0.0010), (1000, 0.0005)))
    assert modes[:2 * PAIRS] == [True, False] * PAIRS and modes[-1] is False
    assert decisions == [True, False]
