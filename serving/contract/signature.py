"""A model's tensors: the inputs it takes and the outputs it answers, each a name, a datatype
(the Open Inference Protocol's: ``FP32``, ``INT64``, ``BYTES``, …) and a shape (``-1``: any
size in that dimension).

Declared in ``model-settings.json`` beside the model, in the layout MLServer reads (its
``inputs`` and ``outputs``: the protocol's own tensor metadata), so a model that has one
already needs nothing more; other keys of that file are not read. A framework handler that can
read the tensors from the model itself (an ONNX session) gives them when the file does not.
Protocols report them (KServe's model metadata) and check requests against the inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t

from serving.errors import StartupError

__all__ = ["DATATYPES", "SIGNATURE_FILE", "Signature", "TensorSpec", "read_signature"]

#: The file beside the model that declares its tensors.
SIGNATURE_FILE = "model-settings.json"
#: The datatypes a tensor may have.
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def fits(self, shape: t.Sequence[int]) -> bool:
        """Whether a tensor of ``shape`` is one of these (``-1`` matches any size)."""
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape))

    def to_dict(self) -> dict[str, t.Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @classmethod
    def from_dict(cls, document: t.Any, where: str) -> Signature:
        """From ``{"inputs": [...], "outputs": [...]}`` (either may be missing); a
        :class:`ValueError` naming ``where`` and the entry that is wrong."""
        if not isinstance(document, dict):
            raise ValueError(f"{where} must be a JSON object")
        found: dict[str, tuple[TensorSpec, ...]] = {}
        for side in ("inputs", "outputs"):
            entries = document.get(side) or []
            if not isinstance(entries, list):
                raise ValueError(f"{where}: {side} must be a list")
            specs = tuple(_spec(entry, f"{where}: {side}[{i}]") for i, entry in enumerate(entries))
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{where}: {side} names a tensor twice")
            found[side] = specs
        return cls(found["inputs"], found["outputs"])

    def to_dict(self) -> dict[str, t.Any]:
        return {"inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs]}


def _spec(entry: t.Any, where: str) -> TensorSpec:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with name, datatype and shape")
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string")
    if datatype not in DATATYPES:
        raise ValueError(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= -1 for n in shape):
        raise ValueError(f"{where}: shape must be a list of sizes (-1: any size)")
    return TensorSpec(name, datatype, tuple(shape))


def read_signature(model_dir: str) -> Signature | None:
    """The tensors ``model_dir`` declares (:data:`SIGNATURE_FILE`), or ``None``.

    :raises StartupError: a file that is not a signature, named with what is wrong.
    """
    path = os.path.join(model_dir, SIGNATURE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            document = json.load(f)
        signature = Signature.from_dict(document, path)
    except (OSError, ValueError) as exc:
        raise StartupError(f"the model's tensors cannot be read: {exc}") from None
    return signature if signature.inputs or signature.outputs else None
