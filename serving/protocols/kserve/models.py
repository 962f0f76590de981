"""What KServe's protocols do with a model, whichever transport asked (REST or gRPC): its
metadata, and input tensors to output tensors through the invocation service.

- **A TorchServe archive's handler** gets what TorchServe's KServe envelopes give it
  (``ts/torch_handler/request_envelope``): v1, the list of ``instances``; v2, one item per
  input tensor (``name``, ``shape``, ``datatype``, ``data`` as nested lists), each answer
  becoming an output named as the input it answers, flattened (TorchServe's v2 envelope
  writes a 1-D shape).
- **Our hosting functions**: the input tensors as an NPY body (one input) or an NPZ body
  keyed by input name (several), the answer read back the same way (NPY: one output,
  ``output-0``; NPZ: an output per member; JSON: one output).

A model that declares its tensors (:mod:`serving.contract.signature`) has its inputs checked
against them (400) before it is called, and its metadata lists them.
"""

from __future__ import annotations

import io
import json
import typing as t

import numpy as np

from handlers.content.base import to_numpy
from handlers.content.npy import NPZHandler, read_npy
from serving import errors
from serving.assembly.torchserve_handler import HandlerCall
from serving.protocols.kserve.tensors import Output, check_inputs

if t.TYPE_CHECKING:
    from serving.contract.invocation import Invocation
    from serving.contract.pipeline import Pipeline
    from serving.protocols.base import Server

__all__ = ["Ask", "handler_call", "infer", "invoke", "metadata"]

#: Makes the invocation of a body a protocol made up: ``ask(body, content_type, accept,
#: **more)`` (the transport adds its request's headers, id and arrival).
Ask = t.Callable[..., "Invocation"]


def metadata(pipeline: Pipeline, name: str) -> dict[str, t.Any]:
    """The model's metadata as the Open Inference Protocol describes it."""
    signature = pipeline.signature
    return {"name": name, "versions": [pipeline.version],
            "platform": "torchserve" if pipeline.archive is not None
            else (pipeline.framework_name or "python"),
            "inputs": [s.to_dict() for s in signature.inputs] if signature else [],
            "outputs": [s.to_dict() for s in signature.outputs] if signature else []}


def invoke(server: Server, pipeline: Pipeline, ask: Ask, body: bytes, content_type: str,
           accept: str) -> tuple[bytes, str]:
    """One invocation the protocol made up: the answer whole (it cannot be chunks)."""
    answer = server.invocations.invoke(pipeline, ask(body, content_type, accept,
                                                     streams=False))
    return t.cast(bytes, answer.body), answer.media_type


def handler_call(server: Server, pipeline: Pipeline, ask: Ask, rows: list[t.Any]) -> t.Any:
    """A TorchServe handler on ``rows`` (its KServe envelope), through its pipeline: the
    handler's answers as they are."""
    answer = server.invocations.invoke(pipeline, ask(b"", None, None, streams=False,
                                                     data=HandlerCall(rows), raw=True))
    return answer.body


def infer(server: Server, pipeline: Pipeline, ask: Ask, name: str,
          tensors: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Output]:
    """The model's output tensors for ``tensors`` (their datatypes as the request named
    them), checked against the inputs it declares."""
    check_inputs(tensors, datatypes, pipeline.signature)
    if pipeline.archive is not None:
        return _handler_outputs(server, pipeline, ask, name, tensors, datatypes)
    return _model_outputs(server, pipeline, ask, tensors)


def _handler_outputs(server: Server, pipeline: Pipeline, ask: Ask, name: str,
                     tensors: dict[str, np.ndarray], datatypes: dict[str, str]
                     ) -> list[Output]:
    items = [{"name": n, "shape": list(a.shape), "datatype": datatypes[n],
              "data": (a.ravel()[0].decode("utf-8", "replace")
                       if datatypes[n] == "BYTES" and a.size else a.tolist())}
             for n, a in tensors.items()]
    answers = handler_call(server, pipeline, ask, items)
    names = list(tensors)
    if len(answers) > len(names):
        raise errors.ModelError(f"the {name} handler answered {len(answers)} times "
                                f"to {len(names)} input(s)", stage="predict")
    outputs: list[Output] = []
    for output_name, answer in zip(names, answers):
        try:
            flat = np.asarray(answer).ravel()
        except Exception:
            raise errors.ModelError(f"the {name} handler's answer is not a tensor",
                                    stage="encode") from None
        outputs.append((output_name, flat, [flat.size]))
    return outputs


def _model_outputs(server: Server, pipeline: Pipeline, ask: Ask,
                   tensors: dict[str, np.ndarray]) -> list[Output]:
    """Our hosting functions on the tensors. What they see is what an NPY (one input) or
    NPZ (several) request gives them; when the content handlers would do the decoding
    (no ``input_fn`` or ``transform_fn``), the arrays are handed over as they would come out
    of it, and when they would do the encoding (no ``output_fn``), the prediction is taken
    as it is: no NPY written and read back on either side (two thirds of a small model's
    request). With the user's functions, the bytes, as documented."""
    limit = server.limits.max_decoded_bytes
    inputs = {n: _npy(a, limit) for n, a in tensors.items()}
    single = len(inputs) == 1
    content_type = "application/x-npy" if single else "application/x-npz"
    accept = "application/x-npy, application/x-npz, application/json;q=0.5"
    own = pipeline.functions.keys()
    if not own & {"input_fn", "transform_fn", "output_fn"}:
        data = next(iter(inputs.values())) if single else inputs
        answer = server.invocations.invoke(pipeline, ask(b"", content_type, accept,
                                                         streams=False, data=data, raw=True))
        return [(n, a, None) for n, a in _prediction_arrays(answer.body)]
    buffer = io.BytesIO()
    if single:
        np.save(buffer, next(iter(inputs.values())), allow_pickle=False)
    else:
        np.savez(buffer, **inputs)
    payload, media_type = invoke(server, pipeline, ask, buffer.getvalue(), content_type, accept)
    return [(n, a, None) for n, a in _arrays_of(payload, media_type, limit)]


def _prediction_arrays(prediction: t.Any) -> list[tuple[str, np.ndarray]]:
    """A prediction as the NPY / NPZ encoders would write it: a mapping an output per
    entry, anything else (an array, a framework tensor, nested numbers) ``output-0``."""
    try:
        if isinstance(prediction, t.Mapping):
            found = [(str(name), np.asarray(to_numpy(value)))
                     for name, value in prediction.items()]
        else:
            found = [("output-0", np.asarray(to_numpy(prediction)))]
    except Exception as exc:
        raise errors.ModelError(f"the model's answer cannot be read as tensors: "
                                f"{type(exc).__name__}", stage="encode") from None
    for name, array in found:
        if array.dtype.hasobject:
            raise errors.ModelError(f"the model's answer {name} is not a tensor (mixed or "
                                    f"ragged values)", stage="encode")
    return found


def _npy(array: np.ndarray, max_decoded_bytes: int) -> np.ndarray:
    """An input as NPY can hold it: BYTES as fixed-width bytes (NPY takes no objects),
    refused (413) before it is made when elements × the longest is past the limit: one
    long element among many short ones would otherwise cost the product."""
    if array.dtype == object:
        longest = max((len(x) for x in array.ravel()), default=0)
        if longest * array.size > max_decoded_bytes:
            raise errors.DecodedTooLarge(
                f"BYTES tensor of {array.size} elements, the longest {longest} bytes, as a "
                f"fixed-width array takes {longest * array.size} bytes", max_decoded_bytes)
        return array.astype(bytes)
    return array


def _arrays_of(payload: bytes, media_type: str, max_decoded_bytes: int
               ) -> list[tuple[str, np.ndarray]]:
    """Our pipeline's answer as output tensors, read by the content handlers' NPY reader
    (NumPy's own ``np.load`` tokenizes each header: two thirds of a small model's request)."""
    bare = media_type.partition(";")[0].strip().lower()
    try:
        if bare == "application/x-npy":
            return [("output-0", read_npy(payload, "the model's answer"))]
        if bare == "application/x-npz":
            reader = NPZHandler()
            reader.max_decoded_bytes = max_decoded_bytes
            return list(reader.decode(payload).items())
        if bare.endswith("json"):
            return [("output-0", np.asarray(json.loads(payload)))]
    except Exception as exc:
        raise errors.ModelError(f"the model's {bare} answer cannot be read as tensors: "
                                f"{type(exc).__name__}", stage="encode") from None
    raise errors.ModelError(f"the model answered {bare}, which is not tensors (NPY, NPZ or "
                            f"JSON)", stage="encode")
