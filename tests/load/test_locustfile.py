"""The locustfile users run, run headless against a real ``serve``: it passes a healthy
server and fails when the answers are not what it was told to expect."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_helpers import REPO, Server, write_model_dir

LOCUSTFILE = REPO / "tests" / "load" / "locustfile.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("locust") / "serve.log"
    server = Server(REPO / "examples" / "numpy-linear" / "model", "--workers", "2",
                    log_path=log)
    server.wait_ready()
    yield server
    server.terminate()


def run_locust(server, tmp_path: Path, *options: str, seconds: int = 3):
    """locust's exit status and its per-request stats rows (from --csv)."""
    prefix = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
         "-H", f"http://127.0.0.1:{server.port}", "-u", "4", "-r", "4", "-t", f"{seconds}s",
         "--csv", str(prefix), "--only-summary", *options],
        capture_output=True, text=True, timeout=seconds + 60)
    with open(f"{prefix}_stats.csv") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    failures = Path(f"{prefix}_failures.csv").read_text()
    return result, stats, failures


def test_a_healthy_server_passes_with_zero_failures(server, tmp_path):
    result, stats, _ = run_locust(server, tmp_path)
    total = stats["Aggregated"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(total["Request Count"]) > 50
    assert int(total["Failure Count"]) == 0


def test_a_wrong_status_fails_the_run_and_says_why(server, tmp_path):
    # The numpy-linear model takes rows of 3 numbers: rows of 2 are answered 422.
    payload = tmp_path / "two.json"
    payload.write_text("[[1, 2]]")
    result, stats, failures = run_locust(server, tmp_path, "--payload", str(payload))
    assert result.returncode == 1
    total = stats["Aggregated"]
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
    assert "status 422, expected 200" in failures
    # Told to expect the 422, the same run passes.
    result, stats, _ = run_locust(server, tmp_path, "--payload", str(payload),
                                  "--expect-status", "422")
    assert result.returncode == 0 and int(stats["Aggregated"]["Failure Count"]) == 0


def test_a_mix_is_sent_by_weight_each_with_its_own_accept(server, tmp_path):
    (tmp_path / "row.json").write_text("[[1, 2, 3]]")
    mix = [
        {"name": "json", "payload": "row.json", "weight": 3},
        {"name": "npy", "payload": "row.json", "accept": "application/x-npy", "weight": 1},
        {"name": "csv", "payload": "row.json", "accept": "text/csv", "weight": 1,
         "path": "/invocations"},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    result, stats, failures = run_locust(server, tmp_path, "--mix", str(tmp_path / "mix.json"))
    assert result.returncode == 0, failures
    # Each answer came in the type its entry accepts (else a failure, and exit 1 above).
    counts = {name: int(stats[name]["Request Count"]) for name in ("json", "npy", "csv")}
    assert counts["json"] > counts["npy"] > 0 and counts["csv"] > 0


def test_an_answer_of_another_type_than_accepted_is_a_failure(tmp_path):
    # output_fn may return a type of its choosing: here text/plain whatever was accepted.
    model_dir = write_model_dir(tmp_path, """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept):
            return "plain", "text/plain"
    """)
    plain = Server(model_dir, "--workers", "1", log_path=tmp_path / "serve.log")
    plain.wait_ready()
    try:
        result, stats, failures = run_locust(plain, tmp_path, seconds=2)
    finally:
        plain.terminate()
    assert result.returncode == 1
    assert int(stats["Aggregated"]["Failure Count"]) == int(stats["Aggregated"]["Request Count"])
    assert "Content-Type 'text/plain', expected application/json" in failures
