"""The Open Inference Protocol's tensors, whatever carries them: REST's JSON (``data``, flat or
nested), REST's binary tensor data extension and gRPC's ``raw_input_contents`` (little-endian
bytes; BYTES elements each a 4-byte length and its bytes), and gRPC's typed contents.

Every way in ends in :func:`from_values` or :func:`from_raw`, which check the same things
(datatype, shape against the data, values inside their datatype) and raise the same
:class:`ProtocolError` (400); every way out starts from :func:`to_raw` or
:func:`to_values`. A model's declared tensors (:class:`~serving.contract.signature.Signature`)
are checked here too (:func:`check_inputs`).
"""

from __future__ import annotations

import json
import math
import struct
import typing as t

import numpy as np

from serving import errors
from serving.contract.limits import json_document

if t.TYPE_CHECKING:
    from serving.contract.signature import Signature

__all__ = ["DATATYPES", "HEADER_LENGTH", "Output", "ProtocolError", "check_inputs",
           "datatype_of", "decode_infer_request", "encode_infer_response", "from_raw",
           "from_values", "select_outputs", "to_raw", "to_values"]

#: The binary tensor data extension's header: the length of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_KIND = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}

#: The most dimensions a tensor may have (NumPy 1's own bound), and the largest size of
#: one: past these no array can be made, so they are a 400 before anything is tried.
MAX_DIMS = 32
MAX_DIM = 2**62

#: An answer's output: its name, its array, and the shape to report (``None``: the array's).
Output = t.Tuple[str, np.ndarray, t.Optional[t.List[int]]]


class ProtocolError(errors.BadRequest):
    """A v1 / v2 request (REST or gRPC) that does not fit the protocol."""


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "SUO":
        return "BYTES"
    name = _BY_KIND.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">"
                        else array.dtype)
    if name is None:
        raise errors.ModelError(f"the model answered a {array.dtype} tensor, which the "
                                f"protocol has no datatype for", stage="encode")
    return name


# -- in --------------------------------------------------------------------------------


def shape_of(value: t.Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise ProtocolError(f"{where}: shape must be a list of sizes (whole numbers, 0 or "
                            f"more)")
    if len(value) > MAX_DIMS or any(n > MAX_DIM for n in value):
        raise ProtocolError(f"{where}: shape must have at most {MAX_DIMS} dimensions, each "
                            f"at most {MAX_DIM}")
    return tuple(value)


def check_datatype(datatype: t.Any, where: str) -> np.dtype:
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype {datatype!r} is not one of "
                            f"{', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A tensor from its bytes: little-endian elements, or BYTES elements each a 4-byte
    little-endian length and that many bytes."""
    dtype = check_datatype(datatype, where)
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = _bytes_elements(raw, where)
        if len(elements) != count:
            raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, "
                                f"the data {len(elements)}")
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"{where}: shape {list(shape)} of {datatype} takes "
                            f"{count * dtype.itemsize} bytes, not {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def from_values(values: t.Sequence[t.Any], datatype: str, shape: tuple[int, ...],
                where: str) -> np.ndarray:
    """A tensor from its elements, flat in row-major order (numbers, booleans, or for
    BYTES ``str`` (REST's JSON) or ``bytes`` (gRPC's contents))."""
    dtype = check_datatype(datatype, where)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, the data "
                            f"{len(values)}")
    if datatype == "BYTES":
        if not all(isinstance(x, (str, bytes)) for x in values):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [x.encode("utf-8") if isinstance(x, str) else x for x in values]
        return array.reshape(shape)
    kinds = (bool,) if datatype == "BOOL" else (int, float) if dtype.kind == "f" else (int,)
    if not all(isinstance(x, kinds) and (datatype == "BOOL" or not isinstance(x, bool))
               for x in values):
        raise ProtocolError(f"{where}: {datatype} data must be "
                            f"{'booleans' if datatype == 'BOOL' else 'numbers'}")
    array = _in_range(list(values), dtype, datatype, where) if dtype.kind in "iuf" else \
        np.array(values, dtype=dtype)
    return array.reshape(shape)


def _in_range(flat: list[t.Any], dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """Numbers as an array of ``dtype``; a value the datatype cannot hold is a 400 (as
    Triton answers it), never wrapped (UINT8 -1 → 255) nor made infinite."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        wide = np.array(flat) if flat else np.zeros(0, dtype=np.int64)
        exact = wide.dtype.kind in "iu"  # else NumPy made floats or objects of the ints
        low, high = ((int(wide.min()), int(wide.max())) if wide.size else (0, 0)) if exact \
            else (min(flat), max(flat))
        if low < info.min or high > info.max:
            raise ProtocolError(f"{where}: {datatype} holds {info.min} to {info.max}, not "
                                f"{low if low < info.min else high}")
        return wide.astype(dtype) if exact else np.array(flat, dtype=dtype)
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise ProtocolError(f"{where}: a number is beyond {datatype}'s range") from None
    if dtype.itemsize < 8 and wide.size:
        finite = wide[np.isfinite(wide)]
        if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
            raise ProtocolError(f"{where}: a number is beyond {datatype}'s range "
                                f"(±{float(np.finfo(dtype).max):g})")
    return wide.astype(dtype)


def _bytes_elements(raw: bytes, where: str) -> list[bytes]:
    elements, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ProtocolError(f"{where}: BYTES data ends inside an element")
        elements.append(raw[at:at + size])
        at += size
    return elements


def _flatten(data: list[t.Any]) -> list[t.Any]:
    flat: list[t.Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_tensor(spec: t.Any, binary: memoryview, at: int, index: int
                 ) -> tuple[np.ndarray, int]:
    """One input tensor of a REST infer request, and where the next one's binary data
    starts."""
    if not isinstance(spec, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = spec.get("name")
    where = f"input {name!r}" if isinstance(name, str) else f"inputs[{index}]"
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}: name must be a non-empty string")
    datatype = spec.get("datatype")
    check_datatype(datatype, where)
    shape = shape_of(spec.get("shape"), where)
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise ProtocolError(f"{where}: has both data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or at + size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r} is more than the "
                                f"{len(binary) - at} bytes of binary data left")
        return from_raw(bytes(binary[at:at + size]), datatype, shape, where), at + size
    data = spec.get("data")
    if data is None:
        raise ProtocolError(f"{where}: no data (nor binary_data_size)")
    return from_values(_flatten(data if isinstance(data, list) else [data]), datatype, shape,
                       where), at


def decode_infer_request(body: bytes, header_length: str | None, max_decoded_bytes: int
                         ) -> tuple[dict[str, t.Any], dict[str, np.ndarray]]:
    """A REST infer request's JSON and its input tensors by name, in order.

    :param header_length: ``Inference-Header-Content-Length``: the body is that much JSON,
        then the inputs' binary data.
    :param max_decoded_bytes: the most the JSON may decode to (413 past it).
    """
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()
                and len(header_length) <= 19) or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length[:40]!r} is not a length "
                                f"within the {len(body)}-byte body")
        head, binary = body[:int(header_length)], memoryview(body)[int(header_length):]
    else:
        head, binary = body, memoryview(b"")
    document = json_document(head, max_decoded_bytes, "the request", error=ProtocolError)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) \
            or not document["inputs"]:
        raise ProtocolError('the request must be an object with "inputs": a list of tensors')
    tensors: dict[str, np.ndarray] = {}
    at = 0
    for index, spec in enumerate(document["inputs"]):
        array, at = _json_tensor(spec, binary, at, index)
        if spec["name"] in tensors:
            raise ProtocolError(f"input {spec['name']!r} appears twice")
        tensors[spec["name"]] = array
    if at != len(binary):
        raise ProtocolError(f"{len(binary) - at} bytes of binary data no input claims")
    outputs = document.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str)
            and isinstance(o.get("parameters", {}), (dict, type(None))) for o in outputs)):
        raise ProtocolError('"outputs" must be a list of objects with a name (and '
                            'parameters, an object)')
    if not isinstance(document.get("parameters", {}), (dict, type(None))):
        raise ProtocolError('"parameters" must be an object')
    return document, tensors


def check_inputs(tensors: t.Mapping[str, np.ndarray], datatypes: t.Mapping[str, str],
                 signature: Signature | None) -> None:
    """The inputs against the model's declared ones (400 on a mismatch): every declared
    input given, no other, each of its datatype and of its shape (-1: any size)."""
    if signature is None or not signature.inputs:
        return
    declared = {spec.name: spec for spec in signature.inputs}
    unknown = [name for name in tensors if name not in declared]
    if unknown:
        raise ProtocolError(f"no input named {', '.join(map(repr, unknown))}; the model "
                            f"takes {', '.join(map(repr, declared))}")
    missing = [name for name in declared if name not in tensors]
    if missing:
        raise ProtocolError(f"input {', '.join(map(repr, missing))} missing; the model takes "
                            f"{', '.join(map(repr, declared))}")
    for name, array in tensors.items():
        spec = declared[name]
        if datatypes[name] != spec.datatype:
            raise ProtocolError(f"input {name!r} is {datatypes[name]}; the model takes "
                                f"{spec.datatype}")
        if not spec.fits(array.shape):
            raise ProtocolError(f"input {name!r} has shape {list(array.shape)}; the model "
                                f"takes {list(spec.shape)} (-1: any size)")


# -- out -------------------------------------------------------------------------------


def select_outputs(wanted: t.Sequence[str], outputs: list[Output]) -> list[Output]:
    """The outputs a request asked for by name (all, when it named none); a name the model
    does not answer is a 400."""
    if not wanted:
        return outputs
    known = {name for name, _, _ in outputs}
    missing = [name for name in wanted if name not in known]
    if missing:
        raise ProtocolError(f"no output named {', '.join(map(repr, missing))}; the model "
                            f"answers {', '.join(sorted(known))}")
    return [output for output in outputs if output[0] in wanted]


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b
                        for b in (_as_bytes(x) for x in array.ravel()))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_values(array: np.ndarray, datatype: str) -> list[t.Any]:
    """The elements, flat, as JSON and gRPC's typed contents take them (BYTES as bytes)."""
    if datatype == "BYTES":
        return [_as_bytes(x) for x in array.ravel()]
    return array.ravel().tolist()


def _wanted_binary(document: dict[str, t.Any], name: str) -> bool:
    for output in document.get("outputs") or ():
        if output["name"] == name:
            parameters = output.get("parameters") or {}
            if "binary_data" in parameters:
                return bool(parameters["binary_data"])
    parameters = document.get("parameters") or {}
    return bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))


def encode_infer_response(document: dict[str, t.Any], model_name: str,
                          model_version: str | None, outputs: list[Output]
                          ) -> tuple[bytes, dict[str, str]]:
    """A REST infer response's body and headers: ``outputs`` in JSON or (as the request
    asks, per output or for all) binary data."""
    chosen = select_outputs([o["name"] for o in document.get("outputs") or ()], outputs)
    entries, chunks = [], []
    for name, array, shape in chosen:
        datatype = datatype_of(array)
        entry: dict[str, t.Any] = {"name": name, "datatype": datatype,
                                   "shape": list(shape if shape is not None else array.shape)}
        if _wanted_binary(document, name):
            raw = to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [x.decode("utf-8", "replace") for x in to_values(array, datatype)]
        else:
            entry["data"] = to_values(array, datatype)
        entries.append(entry)
    answer: dict[str, t.Any] = {"model_name": model_name}
    if model_version is not None:
        answer["model_version"] = model_version
    if isinstance(document.get("id"), str):
        answer["id"] = document["id"]
    answer["outputs"] = entries
    head = json.dumps(answer).encode("utf-8")
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *chunks]), {"Content-Type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(head))}


def _as_bytes(value: t.Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")
