"""The framework-handler base class."""

from __future__ import annotations

import typing as t

import numpy as np

from handlers.content.base import to_numpy

__all__ = ["FrameworkHandler", "SelectionError", "cast_floats", "outputs_to_numpy"]


class SelectionError(ValueError):
    """No framework, or several, fit the model; the message says what to set."""


class FrameworkHandler:
    """What one framework adds: loading its files, placing, and calling a model.

    Subclasses import their framework in ``__init__`` (never at module import),
    and write :meth:`artifacts`, :meth:`load` and :meth:`predict`.
    """

    name: t.ClassVar[str] = ""
    #: The framework's top-level package, to recognise a model object by its type.
    package: t.ClassVar[str] = ""
    #: The files its default loader reads, for the message of a model directory with none.
    files_help: t.ClassVar[str] = ""
    #: Whether :meth:`predict` takes inputs of several requests joined along their first
    #: dimension and gives one output row per input row (dynamic batching).
    batchable: t.ClassVar[bool] = False

    def __init__(self, settings: t.Mapping[str, t.Any] | None = None) -> None:
        """:param settings: the server's settings by name; a handler reads those it has
        (PyTorch: ``trust_pickled_models``), so no other module names them."""
        self.settings = dict(settings or {})
        self._float_dtypes: dict[int, t.Any] = {}

    @classmethod
    def artifacts(cls, model_dir: str) -> list[str]:
        """Files in ``model_dir`` this framework's default loader reads (no import needed)."""
        return []

    def configure_worker(self, device: str, threads: int) -> None:
        """Set this worker process's threads and device; called once, after fork."""

    def load(self, model_dir: str, device: str) -> t.Any:
        """The default ``model_fn``: the model in ``model_dir``, on ``device``."""
        raise NotImplementedError

    def place(self, model: t.Any, device: str) -> t.Any:
        """Move a loaded model (a user's ``model_fn``'s too) to ``device``."""
        return model

    def signature(self, model: t.Any) -> dict[str, t.Any] | None:
        """The tensors a loaded model takes and answers, when the model itself says
        (``{"inputs": [{"name", "datatype", "shape"}, ...], "outputs": [...]}``, the Open
        Inference Protocol's datatypes, ``-1`` for a size that varies); ``None``: it does
        not (a TorchScript file keeps no datatypes or sizes of its inputs)."""
        return None

    def predict(self, model: t.Any, data: t.Any, device: str) -> t.Any:
        """The default ``predict_fn``: NumPy in, the model's forward pass, NumPy out."""
        raise NotImplementedError

    def float_dtype(self, model: t.Any) -> t.Any:
        """The NumPy dtype of the model's floating parameters, looked up once per model."""
        key = id(model)
        if key not in self._float_dtypes:
            self._float_dtypes[key] = self.find_float_dtype(model)
        return self._float_dtypes[key]

    def find_float_dtype(self, model: t.Any) -> t.Any:
        """The first floating parameter's dtype, or ``None``; frameworks override it."""
        return None


def cast_floats(array: np.ndarray, dtype: t.Any) -> np.ndarray:
    """Floating input in the model's floating dtype: JSON has no float32, models mostly do.

    Integers keep theirs (token ids, class indices).
    """
    if array.dtype.kind == "f" and dtype is not None and array.dtype != dtype:
        return array.astype(dtype)
    return array


def outputs_to_numpy(out: t.Any) -> t.Any:
    """A model's outputs with every tensor in them as a NumPy array (tuples, lists, dicts kept)."""
    if isinstance(out, dict):
        return {k: outputs_to_numpy(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(outputs_to_numpy(v) for v in out)
    return to_numpy(out)
