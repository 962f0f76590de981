"""GET /metrics on a real server: counts added up across workers, and kept when one dies."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.server_helpers import REPO, free_port, run_serve, wait_for

EXAMPLE = REPO / "examples" / "numpy-linear" / "model"

#: What the test sends, and what each is answered: (how many, request kwargs, status).
SEQUENCE = [
    (24, {"json": [[1, 2, 3]]}, 200),
    (6, {"json": [[1, 2]]}, 422),  # rows of 2 numbers: the example's predict_fn refuses
    (5, {"data": b"1,2,3", "headers": {"Content-Type": "text/x-nothing"}}, 415),
    (3, {"json": [[1, 2, 3]], "headers": {"Accept": "image/png"}}, 406),
]


#: Workers write what they counted four times a second: a scrape this long after the last
#: answer sees all of it.
SETTLE_SECONDS = 0.6


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, once the workers have written their counts:
    (name, sorted labels) → value."""
    time.sleep(SETTLE_SECONDS)
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def send_sequence(url: str) -> None:
    """The sequence, 8 at a time on fresh connections, so that both workers answer."""
    jobs = [(kwargs, status) for count, kwargs, status in SEQUENCE for _ in range(count)]

    def send(job):
        kwargs, status = job
        response = requests.post(url, timeout=30, **kwargs)
        assert response.status_code == status, response.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, jobs))


def worker_pids(log: str) -> set[str]:
    """The pids of the processes that wrote access lines."""
    return set(re.findall(r"\] \[(\d+)\] \[INFO\] \[[^\]]+\] serving\.access: ", log))


def db_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".db")


def assert_sequence_counted(samples: dict, times: int) -> None:
    for count, _, status in SEQUENCE:
        assert value(samples, "serving_requests_total", route="/invocations", status=str(status),
                     content_type="application/json" if status != 415 else "other") \
            == count * times, status
    total = sum(count for count, _, _ in SEQUENCE) * times
    ok = SEQUENCE[0][0] * times
    # Every request is timed.
    assert value(samples, "serving_request_duration_seconds_count", route="/invocations") == total
    assert value(samples, "serving_request_duration_seconds_bucket", route="/invocations",
                 le="+Inf") == total
    assert value(samples, "serving_request_body_bytes_count") == total
    assert value(samples, "serving_response_body_bytes_count") == total
    # A stage is timed when it finishes. 415 is refused before decoding; 422 is raised by
    # predict_fn; image/png has an encoder, which refuses this prediction: 406 at encode.
    refused_at_predict, refused_at_encode = SEQUENCE[1][0] * times, SEQUENCE[3][0] * times
    assert value(samples, "serving_stage_duration_seconds_count", stage="decode") \
        == ok + refused_at_predict + refused_at_encode
    assert value(samples, "serving_stage_duration_seconds_count", stage="predict") \
        == ok + refused_at_encode
    assert value(samples, "serving_stage_duration_seconds_count", stage="encode") == ok


def test_counts_add_up_across_two_workers_and_survive_a_killed_worker(serve, tmp_path):
    directory = tmp_path / "metrics"
    server = serve(EXAMPLE, "--workers", "2", "--threads", "2",
                   env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    # Requests to another route until both workers have answered some (the second may
    # still be starting): their count must add up over the two processes.
    warm_up = 0
    with ThreadPoolExecutor(8) as pool:
        deadline = time.monotonic() + 30
        while len(worker_pids(server.log)) < 2 and time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: requests.get(
                server.url("/execution-parameters"), timeout=10).status_code, range(16)))
            assert statuses == [200] * 16
            warm_up += 16
    assert len(worker_pids(server.log)) == 2, "both workers should have answered"
    send_sequence(server.url())

    first = scrape(server.url("/metrics"))
    assert value(first, "serving_requests_total", route="/execution-parameters", status="200",
                 content_type="") == warm_up
    assert_sequence_counted(first, times=1)
    assert value(first, "serving_worker_restarts_total") == 0
    assert value(first, "serving_model_load_seconds") > 0
    assert value(first, "serving_requests_in_flight") == 0  # as sampled before the scrape

    # Kill a worker three times over; each time the master folds its files into the archive.
    files_after_kills = []
    for kills in range(1, 4):
        victim = int(sorted(worker_pids(server.log))[0]) if kills == 1 else newest_worker(server)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: value(scrape(server.url("/metrics")), "serving_worker_restarts_total")
                 == kills, 30, f"restart {kills}")
        send_sequence(server.url())  # the new worker counts too
        files_after_kills.append(db_files(directory))
        samples = scrape(server.url("/metrics"))
        # Nothing the dead workers counted is lost, nothing counted twice.
        assert_sequence_counted(samples, times=1 + kills)
        for key, before in first.items():
            if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
                assert samples.get(key, 0.0) >= before, key

    # The file count is bounded: 3 processes (master, 2 workers) a type, and one archive
    # each for counters and histograms, however many workers died.
    assert len({len(files) for files in files_after_kills}) == 1, files_after_kills
    final = files_after_kills[-1]
    assert "counter_archive.db" in final and "histogram_archive.db" in final
    pids = {re.match(r".*_(\d+)\.db$", name).group(1) for name in final
            if not name.endswith("archive.db")}
    assert len(pids) <= 3, final
    assert server.terminate() == 0


def newest_worker(server) -> int:
    booted = re.findall(r"Booting worker with pid: (\d+)", server.log)
    return int(booted[-1])


def test_metrics_on_their_own_port(serve):
    port = free_port()
    server = serve(EXAMPLE, "--workers", "1", "--metrics-port", str(port))
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    assert requests.post(server.url(), json=[[1, 2, 3]]).status_code == 200
    samples = scrape(metrics_url)
    assert value(samples, "serving_requests_total", route="/invocations", status="200",
                 content_type="application/json") == 1
    # The main port does not expose them, and the metrics port serves nothing else.
    hidden = requests.get(server.url("/metrics"))
    assert hidden.status_code == 404 and hidden.json()["code"] == 404
    assert requests.post(f"http://127.0.0.1:{port}/invocations", json=[[1, 2, 3]]).status_code \
        == 404


def test_metrics_port_auto_is_chosen_inside_the_safe_port_range(serve):
    """A SageMaker multi-container endpoint gives each container SAGEMAKER_SAFE_PORT_RANGE
    for its other ports: --metrics-port auto takes a free one inside it (here the range's
    first port is busy); a port outside it is refused before anything starts."""
    import socket

    for _ in range(50):  # a busy port whose next one is free: the range is both
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        first = busy.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", first + 1))
                break
            except (OSError, OverflowError):  # taken (a client's port, say), or past 65535
                busy.close()
    else:
        raise AssertionError("no free port next to 50 ports the kernel gave")
    with busy:
        busy.listen()
        server = serve(EXAMPLE, "--workers", "1", "--metrics-port", "auto",
                       env={"SAGEMAKER_SAFE_PORT_RANGE": f"{first}-{first + 1}"})
        chosen = first + 1
        assert f"metrics: /metrics on port {chosen}" in server.log, server.log
        assert requests.post(server.url(), json=[[1, 2, 3]]).status_code == 200
        assert value(scrape(f"http://127.0.0.1:{chosen}/metrics"), "serving_requests_total",
                     route="/invocations", status="200", content_type="application/json") == 1
        assert requests.get(server.url("/metrics")).status_code == 404
    outside = run_serve("--model-dir", str(EXAMPLE), "--metrics-port", str(chosen),
                        env={"SAGEMAKER_SAFE_PORT_RANGE": "20000-20009"})
    assert outside.returncode == 2
    assert (f"--metrics-port={chosen} is outside SAGEMAKER_SAFE_PORT_RANGE=20000-20009"
            in outside.stderr), outside.stderr


def test_metrics_can_be_turned_off(serve):
    server = serve(EXAMPLE, "--workers", "1", "--no-metrics")
    assert requests.get(server.url("/metrics")).status_code == 404
    assert requests.post(server.url(), json=[[1, 2, 3]]).status_code == 200


def test_refused_slow_client_and_deadline_are_counted(serve, tmp_path):
    import socket

    from tests.server_helpers import write_model_dir

    model_dir = write_model_dir(tmp_path, """
        import time

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            time.sleep(float(data))
            return data
    """)
    server = serve(model_dir, "--workers", "1", "--header-timeout", "0.5",
                   "--request-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # and no more
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"X-Request-Id: " in answer and b'"request_id":"' in answer
    assert requests.post(server.url(), json=2).status_code == 504
    samples = scrape(server.url("/metrics"))
    assert value(samples, "serving_slow_clients_refused_total", phase="headers") == 1
    # Its head never ended, so no route is known.
    assert value(samples, "serving_requests_total", route="none", status="408",
                 content_type="") == 1
    assert value(samples, "serving_deadline_exceeded_total") == 1
    assert value(samples, "serving_requests_total", route="/invocations", status="504",
                 content_type="application/json") == 1


def test_batch_sizes_are_counted(serve, tmp_path):
    from tests.server_helpers import write_model_dir

    model_dir = write_model_dir(tmp_path, """
        import serving

        def model_fn(model_dir):
            return None

        @serving.batched
        def predict_fn(data, model):
            return data * 2
    """)
    server = serve(model_dir, "--workers", "1", "--max-batch-size", "8", "--log-level", "DEBUG")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: requests.post(
            server.url(), json=[[1, 2, 3]], headers={"X-Request-Id": f"b-{i}"}).status_code,
            range(40)))
    assert statuses == [200] * 40
    # The batcher's lines carry the ids of the requests in the batch.
    tagged = re.findall(r"\[([^\]]*)\] serving\.runtime\.batching: batch of (\d+) requests", server.log)
    assert tagged and all(len(ids.split(",")) == int(n) for ids, n in tagged), tagged
    assert sorted(i for ids, _ in tagged for i in ids.split(",")) \
        == sorted(f"b-{i}" for i in range(40))
    samples = scrape(server.url("/metrics"))
    batches = value(samples, "serving_batch_requests_count")
    assert value(samples, "serving_batch_requests_sum") == 40  # every request in one batch
    assert value(samples, "serving_batch_rows_sum") == 40
    assert 1 <= batches <= 40


def test_unwritable_metrics_directory_serves_without_metrics(serve):
    server = serve(EXAMPLE, "--workers", "1", env={"PROMETHEUS_MULTIPROC_DIR": "/proc/serving-x"})
    assert requests.post(server.url(), json=[[1, 2, 3]]).status_code == 200
    assert requests.get(server.url("/metrics")).status_code == 404
    assert "metrics are off: their directory cannot be used" in server.log
