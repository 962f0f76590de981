"""The assembly: from the settings to a server's parts, with no HTTP and no host."""

from __future__ import annotations

import os

import pytest

from serving.assembly.build import THREAD_VARIABLES, assemble, assemble_loaded
from serving.config import Config
from serving.contract.models import ModelRepository
from serving.errors import StartupError
from tests.server_helpers import REPO, write_model_dir

EXAMPLE = REPO / "examples" / "numpy-linear" / "model"


pytestmark = pytest.mark.usefixtures("own_environment")


def config(*argv: str) -> Config:
    return Config.load(list(argv), {})


def test_a_single_model_is_loaded_before_fork_and_threads_are_shared_out():
    assembly = assemble(config("--model-dir", str(EXAMPLE), "--workers", "2"))
    pipeline = assembly.default
    assert assembly.config.preload and pipeline.ready  # loaded in the "master"
    assert assembly.plan.kind == "cpu" and assembly.plan.workers == 2
    threads = str(assembly.plan.threads_per_worker)
    assert all(os.environ[name] == threads for name in THREAD_VARIABLES)
    assert assembly.metrics is not None and pipeline.batcher is None


def test_what_the_operator_set_is_kept():
    os.environ["OMP_NUM_THREADS"] = "7"
    assemble(config("--model-dir", str(EXAMPLE), "--no-preload"))
    assert os.environ["OMP_NUM_THREADS"] == "7"


def test_no_preload_loads_nothing_and_batching_gets_a_batcher():
    assembly = assemble(config("--model-dir", str(EXAMPLE), "--no-preload", "--no-metrics",
                               "--max-batch-size", "4"))
    assert not assembly.default.ready and assembly.metrics is None
    assert assembly.default.batcher is not None


def test_multi_model_is_a_repository_holding_nothing_yet(tmp_path):
    assembly = assemble(config("--model-dir", str(tmp_path), "--multi-model",
                               "--models-memory-mb", "64"), models_dir=str(tmp_path))
    assert isinstance(assembly.models, ModelRepository)
    assert assembly.models.budget_bytes == 64 * 2**20 and assembly.models.loaded() == []
    with pytest.raises(ValueError):  # its records need a directory
        assemble(config("--model-dir", str(tmp_path), "--multi-model"))


def test_a_process_that_never_forks_gets_its_model_loaded_and_placed(tmp_path):
    assembly = assemble_loaded(config("--model-dir", str(EXAMPLE)), threads=1)
    pipeline = assembly.default
    assert pipeline.ready and pipeline.context.worker_index == 0
    assert pipeline.context.device == "cpu" and pipeline.model is not None


def test_user_code_that_cannot_serve_is_a_startup_error(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        def model_fn(model_dir, context, extra):
            return None
    """)
    with pytest.raises(StartupError, match="model_fn"):
        assemble(config("--model-dir", str(model_dir)))


def test_batching_a_predict_that_takes_no_batches_keeps_the_workers_threads():
    # numpy-linear's predict_fn is not @serving.batched: nothing would be batched, and the
    # 2 × batch size threads that keep batches full would only contend.
    assembly = assemble(config("--model-dir", str(EXAMPLE), "--max-batch-size", "16",
                               "--threads", "4"))
    assert assembly.config.max_batch_size == 1 and assembly.config.concurrency == 4
    assert assembly.default.batcher is None


def test_batching_a_batched_predict_gets_threads_to_fill_batches(tmp_path):
    model_dir = write_model_dir(tmp_path, """
        import serving

        def model_fn(model_dir):
            return None

        @serving.batched
        def predict_fn(data, model):
            return data
    """)
    assembly = assemble(config("--model-dir", str(model_dir), "--max-batch-size", "16",
                               "--threads", "4"))
    assert assembly.config.concurrency == 32 and assembly.default.batcher is not None
