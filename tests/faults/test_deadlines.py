"""A prediction that never returns: 504 at the deadline, others served, the worker replaced."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.faults.attackers import SteadyClient
from tests.faults.conftest import worker_pids
from tests.server_helpers import wait_for


def test_stuck_prediction_is_504_at_its_deadline_and_its_worker_replaced(serve, faulty_model):
    server = serve(faulty_model, "--workers", "2", "--threads", "4", "--request-timeout", "2",
                   "--timeout", "5")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "two workers")
    before = set(worker_pids(server))
    with SteadyClient(server.url()) as others:
        started = time.monotonic()
        stuck = requests.post(server.url(), json={"sleep": 120}, timeout=60)
        elapsed = time.monotonic() - started
        # The stuck worker retires once it has answered the rest; a fresh one takes over.
        wait_for(lambda: len(before - set(worker_pids(server))) == 1
                 and len(worker_pids(server)) == 2, 20, "the stuck worker to be replaced")
        time.sleep(0.5)
    assert stuck.status_code == 504, stuck.text
    assert stuck.json()["type"] == "DeadlineExceeded" and "SERVING_REQUEST_TIMEOUT" in stuck.text
    assert 1.9 < elapsed < 5, elapsed
    assert others.statuses and set(others.statuses) == {200}, others.statuses
    assert "retires: a request ran past its deadline" in server.log
    # Replaced from the preloaded master: model_fn ran once, in the master.
    assert (faulty_model / "loads.txt").read_text().count("\n") == 1
    assert requests.post(server.url(), json=[1], timeout=5).json() == [2.0]


def test_eight_stuck_predictions_do_not_stop_other_traffic(serve, faulty_model):
    server = serve(faulty_model, "--workers", "2", "--threads", "4", "--request-timeout", "2",
                   "--timeout", "5")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "two workers")
    with ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        stuck_futures = [pool.submit(requests.post, server.url(), json={"sleep": 120},
                                     timeout=60) for _ in range(8)]
        # The good traffic starts once the stuck requests hold every thread. One sent in
        # the same instant can be taken by a worker whose next prediction threads are
        # about to be stuck, and wait behind them (1-2 runs in 10, before and after issue
        # 24): what this checks is that stuck predictions stop no traffic that comes while
        # they are stuck.
        time.sleep(0.5)
        with SteadyClient(server.url()) as others:
            stuck = [future.result() for future in stuck_futures]
            elapsed = time.monotonic() - started
            time.sleep(3)  # traffic after the replacements
    assert [r.status_code for r in stuck] == [504] * 8
    assert elapsed < 8, elapsed
    # Every good request was answered, none lost: at worst it waited for a fresh worker.
    assert set(others.statuses) == {200}, others.statuses
    assert len(others.statuses) > 20
