"""Device plans with simulated GPU counts: no GPU or framework needed."""

import pytest

from serving.assembly.devices import plan_devices
from serving.config import Config
from serving.errors import StartupError


def config(tmp_path, *argv, env=None):
    return Config.load(["--model-dir", str(tmp_path), *argv], env or {})


def test_cpu_only_machine_splits_cores_between_workers(tmp_path):
    plan = plan_devices(config(tmp_path, "--workers", "4"), gpus_found=0, cpus=16)
    assert (plan.kind, plan.workers, plan.threads_per_worker) == ("cpu", 4, 4)
    assert [plan.device_for(i) for i in range(4)] == ["cpu"] * 4
    assert plan_devices(config(tmp_path, "--workers", "8"), 0, cpus=2).threads_per_worker == 1


def test_auto_with_gpus_gives_one_worker_per_gpu_round_robin(tmp_path):
    plan = plan_devices(config(tmp_path), gpus_found=4, cpus=16)
    assert (plan.kind, plan.workers, plan.threads_per_worker) == ("cuda", 4, 4)
    assert [plan.device_for(i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert plan.device_for(None) == "cpu"  # the master never touches CUDA


def test_more_workers_than_gpus_wrap_around(tmp_path):
    plan = plan_devices(config(tmp_path, "--workers", "5", "--device", "cuda"), 2, cpus=10)
    assert [plan.device_for(i) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert plan.threads_per_worker == 2


def test_one_named_gpu(tmp_path):
    plan = plan_devices(config(tmp_path, "--device", "cuda:1"), gpus_found=2, cpus=8)
    assert plan.workers == 1 and [plan.device_for(i) for i in range(2)] == ["cuda:1"] * 2
    with pytest.raises(StartupError, match="only 2 GPU"):
        plan_devices(config(tmp_path, "--device", "cuda:2"), gpus_found=2, cpus=8)


def test_cpu_setting_ignores_gpus(tmp_path):
    plan = plan_devices(config(tmp_path, "--device", "cpu", "--workers", "2"), 4, cpus=8)
    assert plan.kind == "cpu" and plan.device_for(1) == "cpu"


def test_cuda_without_gpus_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="no GPU is visible"):
        plan_devices(config(tmp_path, env={"SERVING_DEVICE": "cuda"}), 0, cpus=8)


def test_explicit_preload_on_gpus_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="CUDA does not survive fork"):
        plan_devices(config(tmp_path, "--preload"), gpus_found=1, cpus=8)
    # Left at its default, preload is simply off on GPUs (the cli turns it off).
    assert plan_devices(config(tmp_path), gpus_found=1, cpus=8).kind == "cuda"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:", "tpu"])
def test_bad_device_values(tmp_path, value):
    from serving.config import ConfigError

    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
        config(tmp_path, "--device", value)
