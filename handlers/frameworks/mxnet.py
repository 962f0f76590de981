"""MXNet: ``<prefix>-symbol.json`` + ``<prefix>-NNNN.params`` (Module checkpoints and exported
Gluon blocks alike), loaded as a Gluon ``SymbolBlock`` with a free batch dimension.
"""

from __future__ import annotations

import os
import re
import threading
import typing as t

import numpy as np

from handlers.frameworks.base import FrameworkHandler, SelectionError, outputs_to_numpy

__all__ = ["MXNetHandler", "SymbolModel"]

_PARAMS = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")


class SymbolModel:
    """A loaded checkpoint: the block, its data inputs, and the label inputs of its loss head.

    A Module checkpoint's ``SoftmaxOutput`` (or other ``*Output``) takes a label, which
    its forward pass ignores: we feed zeros of the inferred shape.
    """

    def __init__(self, block: t.Any, symbol: t.Any, data_names: list[str],
                 label_names: list[str]) -> None:
        self.block, self.symbol = block, symbol
        self.data_names, self.label_names = data_names, label_names
        self._label_shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def label_shapes(self, data_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Shapes of the dummy labels for a batch of ``data_shape``, inferred once per shape."""
        if data_shape not in self._label_shapes:
            arg_shapes, _, _ = self.symbol.infer_shape_partial(
                **{self.data_names[0]: data_shape})
            shapes = dict(zip(self.symbol.list_arguments(), arg_shapes))
            self._label_shapes[data_shape] = [tuple(shapes[name]) or (data_shape[0],)
                                              for name in self.label_names]
        return self._label_shapes[data_shape]


class MXNetHandler(FrameworkHandler):
    name = "mxnet"
    batchable = True
    package = "mxnet"
    files_help = "<prefix>-symbol.json with <prefix>-NNNN.params"

    def __init__(self, settings: t.Mapping[str, t.Any] | None = None) -> None:
        super().__init__(settings)
        import mxnet

        self.mx = mxnet
        # MXNet's executors are not safe to call from several threads at once.
        self._lock = threading.Lock()

    @classmethod
    def _checkpoints(cls, model_dir: str) -> dict[str, list[str]]:
        """prefix → its params files, newest epoch last, for prefixes with a symbol file."""
        found: dict[str, list[str]] = {}
        for name in sorted(os.listdir(model_dir)):
            match = _PARAMS.match(name)
            if match and os.path.isfile(os.path.join(model_dir, f"{match['prefix']}-symbol.json")):
                found.setdefault(match["prefix"], []).append(name)
        return found

    @classmethod
    def artifacts(cls, model_dir: str) -> list[str]:
        return [f"{prefix}-symbol.json + {params[-1]}"
                for prefix, params in cls._checkpoints(model_dir).items()]

    def context(self, device: str) -> t.Any:
        if device.startswith("cuda"):
            return self.mx.gpu(int(device.partition(":")[2] or 0))
        return self.mx.cpu()

    def load(self, model_dir: str, device: str) -> t.Any:
        mx = self.mx
        checkpoints = self._checkpoints(model_dir)
        if len(checkpoints) != 1:
            raise SelectionError(
                f"the MXNet handler loads one <prefix>-symbol.json with <prefix>-NNNN.params; "
                f"{model_dir} holds {len(checkpoints)} ({', '.join(checkpoints) or 'none'}): "
                f"keep one or define model_fn"
            )
        (prefix, params), = checkpoints.items()
        symbol_file = os.path.join(model_dir, f"{prefix}-symbol.json")
        params_file = os.path.join(model_dir, params[-1])  # the newest epoch
        symbol = mx.sym.load(symbol_file)
        # Module checkpoints prefix names with "arg:" / "aux:"; exported blocks do not.
        saved = {name.split(":", 1)[-1] for name in mx.nd.load(params_file)}
        inputs = [name for name in symbol.list_arguments() if name not in saved]
        data_names = [name for name in inputs if not name.endswith("_label")]
        label_names = [name for name in inputs if name.endswith("_label")]
        if len(data_names) != 1:
            raise SelectionError(f"{os.path.basename(symbol_file)} takes inputs {data_names}; "
                                 f"the default predict feeds one: define predict_fn")
        block = mx.gluon.SymbolBlock(symbol, [mx.sym.var(n) for n in data_names + label_names])
        block.collect_params().load(params_file, ctx=self.context(device))
        return SymbolModel(block, symbol, data_names, label_names)

    def place(self, model: t.Any, device: str) -> t.Any:
        block = model.block if isinstance(model, SymbolModel) else model
        if isinstance(block, self.mx.gluon.Block):
            block.collect_params().reset_ctx(self.context(device))
        return model

    def predict(self, model: t.Any, data: t.Any, device: str) -> t.Any:
        mx = self.mx
        ctx = self.context(device)
        if isinstance(data, np.ndarray) and data.dtype.kind in "biuf":
            data = mx.nd.array(data, ctx=ctx, dtype=np.float32)  # MXNet's default dtype
        with self._lock:
            if isinstance(model, SymbolModel):
                labels = [mx.nd.zeros(shape, ctx=ctx) for shape in model.label_shapes(data.shape)]
                out = model.block(data, *labels)
            else:
                out = model(data)
            return outputs_to_numpy(out)

