"""The batcher on its own: what is joined, how results are split, what happens on failure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serving.errors import DeadlineExceeded
from serving.runtime.batching import Batcher, batch_key, split


def test_only_arrays_with_a_batch_dimension_are_joined():
    assert batch_key(np.zeros((2, 3), np.float32)) == ("<f4", (3,))
    assert batch_key(np.zeros((2, 3), np.float64)) != batch_key(np.zeros((2, 3), np.float32))
    assert batch_key(np.zeros((2, 3))) != batch_key(np.zeros((2, 4)))
    assert batch_key(np.zeros(3)) is None  # one sample
    assert batch_key(np.zeros((0, 3))) is None
    assert batch_key(np.zeros((4, 5, 3), np.uint8)) is None  # an image: one sample
    assert batch_key(np.array([["a"]])) is None
    assert batch_key([[1, 2]]) is None


def test_split_follows_row_counts_through_tuples_and_dicts():
    out = np.arange(12).reshape(6, 2)
    parts = split(out, [1, 2, 3])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]]
    parts = split({"a": out, "b": out[:, 0]}, [4, 2])
    assert parts[1]["b"].tolist() == [8, 10]
    parts = split((out, out), [3, 3])
    assert isinstance(parts[0], tuple) and parts[0][1].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert split(out, [2, 2]) is None  # not one output row per input row
    assert split(np.float32(1.0), [1, 1]) is None
    assert split("text", [1, 1]) is None


class Recorder:
    """A predict that records each call's input and can be made to fail or block."""

    def __init__(self):
        self.calls: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, data):
        self.gate.wait(10)
        self.calls.append(data.copy())
        if (data < 0).any():
            raise ValueError("negative")
        return data * 2


def submit_all(batcher, arrays, deadline=float("inf")):
    results: list = [None] * len(arrays)

    def one(i):
        try:
            results[i] = batcher.submit(arrays[i], batch_key(arrays[i]), deadline)
        except Exception as exc:  # the request's own error
            results[i] = exc

    for _ in arrays:
        batcher.expect()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(arrays))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    return results


def test_expected_requests_are_joined_up_to_max_size_and_split_back():
    predict = Recorder()
    batcher = Batcher(predict, max_size=4, max_delay=1.0)
    arrays = [np.full((1, 2), i, np.float32) for i in range(6)]
    results = submit_all(batcher, arrays)
    for array, result in zip(arrays, results):
        assert np.array_equal(result, array * 2)
    assert sorted(len(c) for c in predict.calls) == [2, 4]  # 6 rows, at most 4 a call


def test_a_failing_batch_is_bisected_until_only_the_bad_request_fails():
    predict = Recorder()
    predict.gate.clear()  # hold the first call so that all eight gather behind it
    batcher = Batcher(predict, max_size=8, max_delay=1.0)
    arrays = [np.full((1, 2), -1 if i == 6 else i, np.float32) for i in range(8)]
    threading.Timer(0.3, predict.gate.set).start()
    results = submit_all(batcher, arrays)
    assert isinstance(results[6], ValueError)
    for i, result in enumerate(results):
        if i != 6:
            assert np.array_equal(result, arrays[i] * 2), (i, result)
    assert max(len(c) for c in predict.calls) > 1


def test_requests_past_their_deadline_are_left_out():
    predict = Recorder()
    predict.gate.clear()
    batcher = Batcher(predict, max_size=8, max_delay=0.01)
    blocker = np.full((1, 2), 100, np.float32)
    first = threading.Thread(target=submit_all, args=(batcher, [blocker]))
    first.start()
    time.sleep(0.1)  # the blocker is in predict; these queue behind it and expire
    late = [np.full((1, 2), i, np.float32) for i in range(3)]
    threading.Timer(0.5, predict.gate.set).start()
    results = submit_all(batcher, late, deadline=time.monotonic() + 0.2)
    first.join(10)
    assert all(isinstance(r, DeadlineExceeded) for r in results), results
    assert [c.tolist() for c in predict.calls] == [blocker.tolist()]  # never predicted


def test_a_lone_request_does_not_wait_for_the_delay():
    batcher = Batcher(Recorder(), max_size=8, max_delay=5.0)
    started = time.monotonic()
    submit_all(batcher, [np.ones((1, 2), np.float32)])
    assert time.monotonic() - started < 2.0


def test_a_batch_waits_for_other_clients_at_most_the_delay():
    batcher = Batcher(Recorder(), max_size=8, max_delay=0.5)
    batcher.clients = lambda: 3  # two more connected clients, who send nothing
    started = time.monotonic()
    submit_all(batcher, [np.ones((1, 2), np.float32)])
    assert 0.45 <= time.monotonic() - started < 3.0


def test_unsplittable_output_runs_requests_one_by_one():
    calls = []

    def total(data):
        calls.append(len(data))
        return data.sum(keepdims=True)[0]  # one value for the whole batch: cannot be split

    predict = Recorder()
    predict.gate.clear()
    batcher = Batcher(lambda d: (predict.gate.wait(10), total(d))[1], max_size=8, max_delay=1.0)
    threading.Timer(0.3, predict.gate.set).start()
    arrays = [np.full((1, 2), i, np.float32) for i in range(4)]
    results = submit_all(batcher, arrays)
    assert [r.tolist() for r in results] == [[2 * i] for i in range(4)]
    assert calls.count(1) >= 4


@pytest.mark.parametrize("rows", [[3], [1, 1, 1]])
def test_a_request_bigger_than_max_size_runs_whole(rows):
    predict = Recorder()
    batcher = Batcher(predict, max_size=2, max_delay=0.1)
    arrays = [np.ones((n, 2), np.float32) for n in rows]
    results = submit_all(batcher, arrays)
    assert [len(r) for r in results] == rows


def test_while_batching_does_not_pay_requests_are_predicted_alone_side_by_side():
    # Each call takes 0.2 s with no part to share: joined, four take 0.2 s each in turn
    # would be 0.2 s together; alone, on their own threads, they overlap.
    calls = []

    def predict(data):
        calls.append(len(data))
        time.sleep(0.2)
        return data * 2

    batcher = Batcher(predict, max_size=8, max_delay=1.0)
    batcher.trial.batching_pays = False
    batcher.trial._next_trial = float("inf")  # no trial during this test
    sizes = []
    batcher.on_batch = lambda requests, rows: sizes.append(requests)
    arrays = [np.full((1, 2), i, np.float32) for i in range(4)]
    started = time.monotonic()
    results = submit_all(batcher, arrays)
    assert [r.tolist() for r in results] == [(a * 2).tolist() for a in arrays]
    assert calls == [1, 1, 1, 1] and sizes == [1, 1, 1, 1]
    assert time.monotonic() - started < 0.6  # side by side, not one after another


def test_a_failing_request_alone_fails_only_itself():
    batcher = Batcher(Recorder(), max_size=8, max_delay=1.0)
    batcher.trial.batching_pays = False
    batcher.trial._next_trial = float("inf")
    results = submit_all(batcher, [np.full((1, 2), v, np.float32) for v in (1, -1, 2)])
    assert isinstance(results[1], ValueError)
    assert results[0].tolist() == [[2, 2]] and results[2].tolist() == [[4, 4]]


def test_a_lone_clients_request_is_predicted_on_its_own_thread():
    threads = []

    def predict(data):
        threads.append(threading.current_thread())
        return data

    batcher = Batcher(predict, max_size=8, max_delay=1.0)
    batcher.clients = lambda: 1
    data = np.ones((1, 2), np.float32)
    batcher.expect()
    assert batcher.submit(data, batch_key(data), float("inf")).tolist() == [[1, 1]]
    assert threads == [threading.current_thread()]  # no hand-off to the batching thread
