"""Workers that reload, and a server that is told to stop, lose no request silently."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import requests

from tests.faults.conftest import worker_pids
from tests.server_helpers import wait_for
from tests.faults.attackers import SteadyClient


def test_a_reloading_worker_takes_no_traffic(serve, faulty_model):
    (faulty_model / "load_delay.txt").write_text("8")
    server = serve(faulty_model, "--workers", "2", "--no-preload", ready=False)
    server.wait_ready(timeout=60)
    wait_for(lambda: (faulty_model / "loads.txt").exists()
             and (faulty_model / "loads.txt").read_text().count("\n") == 2, 30, "both loads")
    victim = worker_pids(server)[0]
    with SteadyClient(server.url()) as clients:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        # The replacement loads for 8 s; meanwhile the other worker answers everything.
        wait_for(lambda: (faulty_model / "loads.txt").read_text().count("\n") == 3, 30,
                 "the replacement to load")
        time.sleep(1)
    # At most the one request the killed worker held can fail; no 503 from a loading worker.
    failures = [s for s in clients.statuses if s != 200]
    assert 503 not in clients.statuses, failures
    assert len(failures) <= 1, failures
    assert len(clients.statuses) > 50


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_refuses_new_connections_and_finishes_in_flight_work(serve, faulty_model):
    server = serve(faulty_model, "--workers", "2", "--timeout", "10")
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        requests.post(server.url(), json={"sleep": 2}, timeout=30))) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: connect_refused(server.port), 2, "new connections to be refused")
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200] * 3
    assert server.proc.wait(30) == 0


def test_sigterm_past_the_grace_period_answers_503_and_exits_non_zero(serve, faulty_model):
    server = serve(faulty_model, "--workers", "1", "--timeout", "2", "--request-timeout", "60")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        requests.post(server.url(), json={"sleep": 20}, timeout=30)))
    thread.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    (answer,) = answers
    # Not dropped without a word: a 503 at the end of the 2 s grace period.
    assert answer.status_code == 503 and answer.json()["message"] == "the server is stopping"
    assert 1.5 < time.monotonic() - stopped < 8
    assert server.proc.wait(30) == 1
    assert "were dropped" in server.log
