"""The models a multi-model server holds: loads, unloads, the memory budget and the
error each failure is, with the repository alone (no server), its "workers" forked."""

from __future__ import annotations

import os
import types

import pytest

from handlers.content import default_registry
from serving import errors
from serving.contract.models import ModelRepository
from serving.contract.pipeline import Pipeline


def model_dir(tmp_path, name: str, size: int = 100, fails: bool = False):
    path = tmp_path / name
    path.mkdir()
    (path / "weights.bin").write_bytes(b"w" * size)
    if fails:
        (path / "FAIL").write_text("")
    return str(path)


def build(directory: str, token: str, first: bool, name: str) -> Pipeline:
    module = types.ModuleType("inference")
    module.__file__ = "inference.py"

    def model_fn(model_dir):
        if os.path.exists(os.path.join(model_dir, "FAIL")):
            raise RuntimeError("the weights are corrupt")
        return os.path.basename(model_dir)

    module.model_fn = model_fn
    module.predict_fn = lambda data, model: model
    return Pipeline.from_module(module, default_registry(), model_dir=directory,
                                default_accept="application/json")


@pytest.fixture
def repository(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    return ModelRepository(str(records), build, budget_bytes=250, lock_timeout=2)


def names(repository) -> list[str]:
    return [m["modelName"] for m in repository.page(None, 100)["models"]]


def test_a_loaded_model_answers_and_an_unloaded_one_is_a_404(tmp_path, repository):
    repository.load("a", model_dir(tmp_path, "a"))
    assert repository.get("a").model == "a"
    assert repository.describe("a")["modelUrl"].endswith("/a")
    with pytest.raises(errors.Conflict):
        repository.load("a", model_dir(tmp_path, "a2"))
    repository.unload("a")
    with pytest.raises(errors.NotFound):
        repository.get("a")
    with pytest.raises(errors.NotFound):
        repository.unload("a")


def test_the_least_recently_used_make_room(tmp_path, repository):
    repository.load("a", model_dir(tmp_path, "a"))
    repository.load("b", model_dir(tmp_path, "b"))
    os.utime(repository.store._path("a"), (1, 1))  # "b" answered more recently
    repository.load("c", model_dir(tmp_path, "c"))  # 300 > 250: one must go
    assert names(repository) == ["b", "c"]
    with pytest.raises(errors.InsufficientStorage):  # over the budget alone: nothing unloaded
        repository.load("huge", model_dir(tmp_path, "huge", size=300))
    assert names(repository) == ["b", "c"]


def test_a_model_that_fails_to_load_is_a_500_naming_the_stage_and_leaves_no_record(
        tmp_path, repository):
    with pytest.raises(errors.ModelError) as failed:
        repository.load("bad", model_dir(tmp_path, "bad", fails=True))
    assert failed.value.status_code == 500 and "model_fn raised RuntimeError" in str(failed.value)
    assert names(repository) == []
    with pytest.raises(errors.BadRequest):
        repository.load("nowhere", str(tmp_path / "missing"))


def test_every_worker_sees_a_load_and_an_unload_made_in_another(tmp_path, repository):
    url = model_dir(tmp_path, "a")

    def in_worker(fn) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                fn()
                os._exit(0)
            except BaseException:
                os._exit(1)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_worker(lambda: repository.load("a", url)) == 0
    assert repository.get("a").model == "a"  # loaded here on first use
    assert in_worker(lambda: repository.unload("a")) == 0
    with pytest.raises(errors.NotFound):
        repository.get("a")
    assert repository.loaded() == []  # and its pipeline was dropped here
