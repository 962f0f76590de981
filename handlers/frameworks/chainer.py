"""Chainer: the user's ``model_fn`` builds the network (Chainer files hold weights only);
the default predict runs it in inference mode, on a GPU through CuPy when asked.
"""

from __future__ import annotations

import os
import typing as t

import numpy as np

from handlers.frameworks.base import (
    FrameworkHandler,
    SelectionError,
    cast_floats,
    outputs_to_numpy,
)

__all__ = ["ChainerHandler"]


class ChainerHandler(FrameworkHandler):
    name = "chainer"
    batchable = True
    package = "chainer"

    def __init__(self, settings: t.Mapping[str, t.Any] | None = None) -> None:
        super().__init__(settings)
        # Chainer 7's import-time check needs the standard library's distutils.
        os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
        import chainer

        self.chainer = chainer

    def load(self, model_dir: str, device: str) -> t.Any:
        raise SelectionError(
            "Chainer files hold weights, not the network: define model_fn in inference.py to "
            "build the model and load them (chainer.serializers.load_npz)"
        )

    def place(self, model: t.Any, device: str) -> t.Any:
        if device.startswith("cuda") and isinstance(model, self.chainer.Link):
            model.to_device(f"@cupy:{device.partition(':')[2] or 0}")
        return model

    def find_float_dtype(self, model: t.Any) -> t.Any:
        if not isinstance(model, self.chainer.Link):
            return None
        return next((p.dtype for p in model.params()
                     if p.dtype is not None and p.dtype.kind == "f"), None)

    def predict(self, model: t.Any, data: t.Any, device: str) -> t.Any:
        chainer = self.chainer
        if isinstance(data, np.ndarray) and data.dtype.kind in "biuf":
            data = cast_floats(data, self.float_dtype(model))
            if device.startswith("cuda"):
                data = chainer.get_device(f"@cupy:{device.partition(':')[2] or 0}").send(data)
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            out = model(data)
        return outputs_to_numpy(out)

