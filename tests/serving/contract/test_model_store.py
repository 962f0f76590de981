"""The multi-model records every worker shares, across real forked processes; and the
least-recently-used budget."""

from __future__ import annotations

import os
import time

import pytest

from serving import errors
from serving.contract.model_budget import fits_alone, to_unload
from serving.contract.model_store import Entry, ModelStore


def in_child(fn) -> int:
    """Run ``fn`` in a forked child, as a worker forked from the master; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:
            code = 99
        os._exit(code or 0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_record_written_in_one_worker_is_read_whole_in_another(tmp_path):
    store = ModelStore(str(tmp_path))  # made in the "master", before fork
    seen = store.generation
    entry = Entry(name="model-1.tar.gz", url="/opt/ml/models/a", bytes=123, token="t1")

    def worker() -> int:
        with store.exclusive():
            store.write(entry)
            store.bump()
        return 0

    assert in_child(worker) == 0
    assert store.generation == seen + 1  # the child's bump is seen here without a read
    assert store.read() == {"model-1.tar.gz": entry}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    store.remove("model-1.tar.gz")
    store.remove("model-1.tar.gz")  # twice: nothing to remove is fine
    assert store.read() == {}


def test_last_used_follows_touch(tmp_path):
    store = ModelStore(str(tmp_path))
    for name in ("a", "b"):
        store.write(Entry(name=name, url="/x", bytes=1, token=name))
    os.utime(store._path("a"), (1000, 1000))
    os.utime(store._path("b"), (2000, 2000))
    assert store.last_used("a") < store.last_used("b")
    store.touch("a")
    assert store.last_used("a") > store.last_used("b")
    assert store.last_used("gone") == 0.0
    store.touch("gone")  # no record: nothing happens


def test_a_load_stuck_in_another_worker_makes_the_next_one_a_503(tmp_path):
    store = ModelStore(str(tmp_path), lock_timeout=0.3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker whose model_fn never returns, holding the lock
        with store.exclusive():
            os.write(write, b"x")
            time.sleep(5)
        os._exit(0)
    try:
        os.read(read, 1)
        started = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable):
            with store.exclusive():
                pass
        assert time.monotonic() - started < 3
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    with store.exclusive():  # released with the process
        pass


def test_the_least_recently_used_make_room_and_no_more():
    sizes = {"old": 40, "middle": 30, "new": 30}
    used = {"old": 1.0, "middle": 2.0, "new": 3.0}.__getitem__
    assert to_unload(sizes, used, 0, 100) == []
    assert to_unload(sizes, used, 20, 100) == ["old"]
    assert to_unload(sizes, used, 40, 100) == ["old"]
    assert to_unload(sizes, used, 50, 100) == ["old", "middle"]
    assert to_unload(sizes, used, 80, 100) == ["old", "middle", "new"]
    assert fits_alone(100, 100) and not fits_alone(101, 100)
