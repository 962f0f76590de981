"""Where workers compute: CPU threads per worker, or which GPU each worker uses.

Decided once in the master from the settings and the machine, without
importing a framework or touching CUDA (the GPU count comes from
``nvidia-smi``); each worker then applies its own placement after fork.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

from serving.config import Config
from serving.errors import StartupError

__all__ = ["DevicePlan", "gpu_count", "plan_devices"]


def gpu_count() -> int:
    """Visible NVIDIA GPUs, counted without initialising CUDA in this process."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10,
                                 check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # the process sees only these (ids or UUIDs)
        count = min(count, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))
    return count


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """Devices and threads for all workers."""

    #: "cpu" or "cuda".
    kind: str
    #: GPUs in use, in the order workers take them (worker i → gpus[i mod len]).
    gpus: tuple[int, ...]
    workers: int
    #: Intra-op threads of each worker: about cores / workers, at least 1.
    threads_per_worker: int

    def device_for(self, worker_index: int | None) -> str:
        """The device of worker ``worker_index`` (``None``: the master, which stays on CPU)."""
        if self.kind == "cpu" or worker_index is None:
            return "cpu"
        return f"cuda:{self.gpus[worker_index % len(self.gpus)]}"


def plan_devices(config: Config, gpus_found: int, cpus: int) -> DevicePlan:
    """The plan for ``config`` on a machine with ``gpus_found`` GPUs and ``cpus`` CPUs.

    Raises :class:`StartupError` when CUDA is asked for and there is none, or
    when preloading is asked for on GPUs (CUDA does not survive fork).
    """
    setting = config.device
    if setting == "auto":
        setting = "cuda" if gpus_found else "cpu"
    if setting == "cpu":
        kind, gpus = "cpu", ()
    else:
        _, _, index = setting.partition(":")
        if not gpus_found:
            raise StartupError(f"device {config.device} ({config.where('device')}) asked for, "
                               f"but no GPU is visible (nvidia-smi -L lists none)")
        if index and int(index) >= gpus_found:
            raise StartupError(f"device {setting}: only {gpus_found} GPU(s) are visible")
        kind, gpus = "cuda", (int(index),) if index else tuple(range(gpus_found))
    workers = config.workers
    if kind == "cuda":
        if config.sources.get("workers") == "default":
            workers = len(gpus)
        if config.preload and config.sources.get("preload") != "default":
            raise StartupError(
                f"preload ({config.where('preload')}) loads the model in the master before "
                f"workers fork, and CUDA does not survive fork: turn it off for GPU serving"
            )
    return DevicePlan(kind=kind, gpus=gpus, workers=workers,
                      threads_per_worker=max(1, cpus // workers))
