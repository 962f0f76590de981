"""The model archives the TorchServe tests serve, made from the handlers beside this
file: with TorchServe's own ``torch-model-archiver`` (the differential test), or as the
same zip written here (tests that need no TorchServe environment)."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import torch

HANDLERS = Path(__file__).resolve().parent / "handlers"

#: name → the archiver's arguments (files are in HANDLERS or made by make_model_files).
ARCHIVES = {
    "probe": {"version": "2.0", "handler": "probe_handler.py"},
    "scripted": {"version": "1.0", "handler": "scripted_handler.py",
                 "serialized_file": "scripted.pt"},
    "eager": {"version": "1.0", "handler": "eager_handler.py", "model_file": "eager_model.py",
              "serialized_file": "eager_state.pt"},
    # A module:function entry point (the archiver reads module.py from its directory).
    "batching": {"version": "1.0", "handler": "batch_handler:handle",
                 "config_file": "batch_config.yaml"},
}


def make_model_files(directory: Path) -> None:
    """The TorchScript model and the eager model's state dict, the same on every run."""
    torch.manual_seed(0)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()))
    scripted.save(str(directory / "scripted.pt"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("eager_model", HANDLERS / "eager_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(1)
    torch.save(module.TinyClassifier().state_dict(), directory / "eager_state.pt")


def _path(directory: Path, name: str) -> Path:
    return directory / name if (directory / name).exists() else HANDLERS / name


def build_with_archiver(archiver: Path, store: Path, work: Path) -> None:
    """Every archive of :data:`ARCHIVES`, by ``torch-model-archiver``, into ``store``."""
    make_model_files(work)
    for name, spec in ARCHIVES.items():
        handler = spec["handler"]
        argv = [str(archiver), "--model-name", name, "--version", spec["version"],
                "--handler", handler if ":" in handler else str(_path(work, handler)),
                "--export-path", str(store), "--force"]
        for key, flag in (("serialized_file", "--serialized-file"),
                          ("model_file", "--model-file"), ("config_file", "--config-file")):
            if key in spec:
                argv += [flag, str(_path(work, spec[key]))]
        subprocess.run(argv, check=True, capture_output=True, cwd=HANDLERS)


def write_archive(path: Path, name: str, files: dict[str, bytes], *, version: str = "1.0",
                  **model: str) -> Path:
    """A ``.mar`` as torch-model-archiver 0.12 writes one: ``files`` at its root, and
    MAR-INF/MANIFEST.json naming them (``model``: handler=, serializedFile=, ...)."""
    manifest = {"createdOn": "01/12/2026 00:00:00", "runtime": "python",
                "model": {"modelName": name, "modelVersion": version, **model},
                "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(path, "w") as archive:
        for file, data in files.items():
            archive.writestr(file, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
    return path


def handler_source(name: str) -> bytes:
    return (HANDLERS / name).read_bytes()
