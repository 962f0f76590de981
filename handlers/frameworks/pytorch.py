"""PyTorch: TorchScript (``model.pt``), exported programs (``model.pt2``), and — only
when trusted — pickled ``nn.Module`` files.

``torch`` is imported when the handler is created, never at module import.
"""

from __future__ import annotations

import os
import typing as t
import zipfile

import numpy as np

from handlers.frameworks.base import (
    FrameworkHandler,
    SelectionError,
    cast_floats,
    outputs_to_numpy,
)

__all__ = ["PyTorchHandler"]

_SUFFIXES = (".pt", ".pth", ".pt2")


def _is_image(array: np.ndarray) -> bool:
    """What the image decoders give: (H, W, 3) uint8."""
    return array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


class PyTorchHandler(FrameworkHandler):
    name = "pytorch"
    batchable = True
    package = "torch"
    files_help = "model.pt, model.pt2, *.pt, *.pth"

    def __init__(self, settings: t.Mapping[str, t.Any] | None = None) -> None:
        super().__init__(settings)
        import torch

        self.torch = torch

    @classmethod
    def artifacts(cls, model_dir: str) -> list[str]:
        return sorted(f for f in os.listdir(model_dir)
                      if f.endswith(_SUFFIXES) and os.path.isfile(os.path.join(model_dir, f)))

    def configure_worker(self, device: str, threads: int) -> None:
        # CPU threads: torch reads OMP_NUM_THREADS, which serve sets (or the user did).
        if device.startswith("cuda"):
            self.torch.cuda.set_device(self.torch.device(device))

    # -- loading -----------------------------------------------------------------------

    def _model_file(self, model_dir: str) -> str:
        for preferred in ("model.pt2", "model.pt"):
            if os.path.isfile(os.path.join(model_dir, preferred)):
                return os.path.join(model_dir, preferred)
        files = self.artifacts(model_dir)
        if len(files) == 1:
            return os.path.join(model_dir, files[0])
        raise SelectionError(
            f"the PyTorch handler loads model.pt2, model.pt or a single .pt/.pth file; "
            f"{model_dir} holds {', '.join(files) or 'none'}: name one model.pt or define model_fn"
        )

    def load(self, model_dir: str, device: str) -> t.Any:
        torch = self.torch
        path = self._model_file(model_dir)
        if path.endswith(".pt2"):
            program = torch.export.load(path)
            if device != "cpu":
                program = torch.export.passes.move_to_device_pass(program, device)
            return program.module()  # an inference graph already: no eval(), no .to()
        if self._is_torchscript(path):
            return torch.jit.load(path, map_location=device).eval()
        try:  # weights_only unpickles tensors and containers, never code: safe to try
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            pass
        else:
            raise SelectionError(
                f"{os.path.basename(path)} holds weights only (a state_dict), no architecture: "
                f"define model_fn to build the model and load them"
            )
        if not self.settings.get("trust_pickled_models"):
            raise SelectionError(
                f"{os.path.basename(path)} is not TorchScript: it is a pickle (torch.save), and "
                f"loading it runs code from the file. Save the model with torch.jit.save or "
                f"torch.export.save, or set SERVING_TRUST_PICKLED_MODELS=true if you trust it"
            )
        model = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(model, torch.nn.Module):
            raise SelectionError(
                f"{os.path.basename(path)} holds a {type(model).__name__}, not an nn.Module: "
                f"define model_fn to build the model"
            )
        return self.place(model, device)

    @staticmethod
    def _is_torchscript(path: str) -> bool:
        """TorchScript archives carry a ``code/`` folder; torch.save pickles do not."""
        try:
            with zipfile.ZipFile(path) as archive:
                return any("/code/" in name for name in archive.namelist())
        except zipfile.BadZipFile:
            return False  # the legacy (non-zip) torch.save format: a pickle

    def place(self, model: t.Any, device: str) -> t.Any:
        if isinstance(model, self.torch.nn.Module):
            model = model.to(device)
            try:
                model.eval()  # dropout and batch norm in inference mode
            except NotImplementedError:
                pass  # an exported program's module: captured for inference already
        return model

    # -- predicting ----------------------------------------------------------------------

    def find_float_dtype(self, model: t.Any) -> t.Any:
        parameters = getattr(model, "parameters", None)
        if parameters is None:
            return None
        for parameter in parameters():
            if parameter.is_floating_point():
                return self.torch.empty((), dtype=parameter.dtype).numpy().dtype
        return None

    def _to_torch(self, data: t.Any, device: str, float_dtype: t.Any) -> t.Any:
        torch = self.torch
        if isinstance(data, np.ndarray):
            if _is_image(data):  # (H, W, 3) uint8 → (1, 3, H, W) float32 in [0, 1]
                tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))
                return (tensor.unsqueeze(0).to(device=device, dtype=torch.float32) / 255.0)
            if data.dtype.kind in "biuf":
                data = cast_floats(data, float_dtype)
                if not data.flags.writeable:  # a view of the request body: torch wants to own it
                    data = data.copy()
                return torch.from_numpy(data).to(device)
            return data
        if isinstance(data, dict):
            return {k: self._to_torch(v, device, float_dtype) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self._to_torch(v, device, float_dtype) for v in data)
        return data

    def predict(self, model: t.Any, data: t.Any, device: str) -> t.Any:
        inputs = self._to_torch(data, device, self.float_dtype(model))
        with self.torch.inference_mode():
            return outputs_to_numpy(model(inputs))
