"""serving.runtime.metrics: buffered counting adds up as prometheus_client's own, and a dead
process's files fold into the archive without losing or doubling a count."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from serving.runtime.metrics import LATENCY_BUCKETS, Metrics, retire_process


def samples(text: str, name: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(name)}


def test_buffered_observations_equal_prometheus_own():
    import prometheus_client

    values = [random.Random(7).expovariate(20) for _ in range(500)] + [0.001, 60, 61, 0]
    metrics = Metrics(content_types=["application/json"])
    reference_registry = CollectorRegistry()
    reference = Histogram("serving_stage_duration_seconds", "x", ["stage"],
                          buckets=LATENCY_BUCKETS, registry=reference_registry)
    for v in values:
        metrics.stage("decode", v)
        reference.labels("decode").observe(v)
    ours = samples(metrics.exposition().decode(), "serving_stage_duration_seconds")
    theirs = samples(prometheus_client.generate_latest(reference_registry).decode(),
                     "serving_stage_duration_seconds")
    theirs = {k: v for k, v in theirs.items() if not k[0].endswith("_created")}
    ours = {k: v for k, v in ours.items() if not k[0].endswith("_created")}
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert abs(ours[key] - theirs[key]) < 1e-9, key


def test_nothing_is_written_before_a_flush_and_everything_after():
    metrics = Metrics(content_types=["application/json"])
    metrics.request_done("/invocations", 200, "application/json", 0.01)
    assert metrics.requests.labels("/invocations", "200", "application/json")._value.get() == 0
    metrics.flush()
    assert metrics.requests.labels("/invocations", "200", "application/json")._value.get() == 1


def test_content_type_labels_are_bounded():
    known = Metrics(content_types=["application/json"])
    assert known.content_type_label("application/json") == "application/json"
    assert known.content_type_label("text/x-made-up") == "other"
    anything = Metrics(content_types=None)  # user code decodes any type
    labels = {anything.content_type_label(f"text/x-{i}") for i in range(100)}
    assert len(labels) == 33 and "other" in labels


def write(path, entries):
    store = MmapedDict(str(path))
    for key, value in entries.items():
        store.write_value(key, value, 0.0)
    store.close()


def read(path):
    return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def test_retire_process_folds_counters_and_deletes_every_file_of_the_pid(tmp_path):
    a = mmap_key("serving_requests", "serving_requests_total", ["status"], ["200"], "h")
    b = mmap_key("serving_requests", "serving_requests_total", ["status"], ["500"], "h")
    write(tmp_path / "counter_archive.db", {a: 5})
    write(tmp_path / "counter_101.db", {a: 3, b: 1})
    write(tmp_path / "counter_102.db", {a: 7})  # alive: untouched
    write(tmp_path / "histogram_101.db", {a: 2})
    write(tmp_path / "gauge_livesum_101.db", {a: 4})
    write(tmp_path / "gauge_max_101.db", {a: 9})
    retire_process(str(tmp_path), 101)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_102.db", "counter_archive.db", "histogram_archive.db"]
    assert read(tmp_path / "counter_archive.db") == {a: 8, b: 1}
    assert read(tmp_path / "histogram_archive.db") == {a: 2}
    assert read(tmp_path / "counter_102.db") == {a: 7}
    retire_process(str(tmp_path), 101)  # twice (or a pid with no files): nothing changes
    assert read(tmp_path / "counter_archive.db") == {a: 8, b: 1}
