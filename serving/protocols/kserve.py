"""KServe's inference protocols on the same models: v1 and the Open Inference Protocol
(v2) REST API, with its binary tensor data extension.

Routes (a Flask blueprint on the main port):

- v1: ``GET /v1/models``, ``GET /v1/models/<name>``, ``POST /v1/models/<name>:predict``
  (``{"instances": [...]}`` → ``{"predictions": [...]}``);
- v2: ``GET /v2`` (server metadata), ``GET /v2/health/live`` and ``/ready``,
  ``GET /v2/models/<name>[/versions/<v>]`` (metadata) and ``.../ready``,
  ``POST /v2/models/<name>[/versions/<v>]/infer``.

Errors on these routes are the protocols' own: ``{"error": "<message>"}`` (the app's
error rendering writes them so under /v1/ and /v2), with our status codes (400 a request that does not fit the protocol, 404 an unknown model or
version, 413, 503, 504, 500 a model failure).

How a request reaches a model:

- **A TorchServe archive's handler** gets what TorchServe's KServe envelopes give it
  (``ts/torch_handler/request_envelope``): v1, the list of ``instances``, its answer
  list becoming ``predictions``; v2, one item per input tensor (``name``, ``shape``,
  ``datatype``, ``data`` as nested lists), each answer becoming an output named as the
  input it answers, flattened (TorchServe's v2 envelope writes a 1-D shape).
- **Our hosting functions**: v1, the instances as a JSON body (``application/json`` in
  and out, through the content handlers or the user's ``input_fn`` / ``output_fn``);
  v2, the input tensors as an NPY body (one input) or an NPZ body keyed by input name
  (several), the answer read back the same way (NPY: one output, ``output-0``; NPZ: an
  output per member; JSON: one output).

Tensors (v2): ``datatype`` one of BOOL, UINT8-64, INT8-64, FP16, FP32, FP64, BYTES;
``shape`` a list of sizes whose product is the number of elements ``data`` (flat or
nested) holds, or, with the binary extension, that its ``binary_data_size`` bytes hold.
Anything else is a 400 before the model is called.
"""

from __future__ import annotations

import io
import json
import math
import struct
import typing as t

import numpy as np
import orjson
from flask import Blueprint, Response, request
from werkzeug.routing import BaseConverter

from serving import errors
from serving.contract.limits import json_document
from serving.assembly.torchserve_handler import HandlerCall
from serving.protocols.base import Protocol

if t.TYPE_CHECKING:
    from serving.contract.pipeline import Pipeline

__all__ = ["HEADER_LENGTH", "KServe", "decode_infer_request", "encode_infer_response"]

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


class ProtocolError(errors.BadRequest):
    """A v1 / v2 request that does not fit the protocol."""


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "SUO":
        return "BYTES"
    name = _BY_KIND.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">"
                        else array.dtype)
    if name is None:
        raise errors.ModelError(f"the model answered a {array.dtype} tensor, which the "
                                f"protocol has no datatype for", stage="encode")
    return name


# -- v2 tensors in and out ------------------------------------------------------------


#: The most dimensions a tensor may have (NumPy 1's own bound), and the largest size of
#: one: past these no array can be made, so they are a 400 before anything is tried.
MAX_DIMS = 32
MAX_DIM = 2**62


def _shape(value: t.Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise ProtocolError(f"{where}: shape must be a list of sizes (whole numbers, 0 or "
                            f"more)")
    if len(value) > MAX_DIMS or any(n > MAX_DIM for n in value):
        raise ProtocolError(f"{where}: shape must have at most {MAX_DIMS} dimensions, each "
                            f"at most {MAX_DIM}")
    return tuple(value)


def _in_range(flat: list[t.Any], dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """JSON numbers as an array of ``dtype``; a value the datatype cannot hold is a 400
    (as Triton answers it), never wrapped (UINT8 -1 → 255) nor made infinite."""
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
    """BYTES tensor data in the binary extension: each element a 4-byte little-endian
    length, then that many bytes."""
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


def _tensor(spec: t.Any, binary: memoryview, at: int, index: int) -> tuple[np.ndarray, int]:
    """One input tensor of an infer request, and where the next one's binary data starts."""
    if not isinstance(spec, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = spec.get("name")
    where = f"input {name!r}" if isinstance(name, str) else f"inputs[{index}]"
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}: name must be a non-empty string")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype {datatype!r} is not one of "
                            f"{', '.join(DATATYPES)}")
    shape = _shape(spec.get("shape"), where)
    count = math.prod(shape)
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: parameters must be an object")
    dtype = DATATYPES[datatype]
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise ProtocolError(f"{where}: has both data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or at + size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r} is more than the "
                                f"{len(binary) - at} bytes of binary data left")
        raw = bytes(binary[at:at + size])
        at += size
        if datatype == "BYTES":
            elements = _bytes_elements(raw, where)
            if len(elements) != count:
                raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, "
                                    f"the data {len(elements)}")
            array = np.empty(count, dtype=object)
            array[:] = elements
        else:
            if size != count * dtype.itemsize:
                raise ProtocolError(f"{where}: shape {list(shape)} of {datatype} takes "
                                    f"{count * dtype.itemsize} bytes, not {size}")
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        return array.reshape(shape), at
    data = spec.get("data")
    if data is None:
        raise ProtocolError(f"{where}: no data (nor binary_data_size)")
    flat = _flatten(data if isinstance(data, list) else [data])
    if len(flat) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, the data "
                            f"{len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [x.encode("utf-8") for x in flat]
    else:
        kinds = (bool,) if datatype == "BOOL" else (int, float) if dtype.kind == "f" \
            else (int,)
        if not all(isinstance(x, kinds) and (datatype == "BOOL" or not isinstance(x, bool))
                   for x in flat):
            raise ProtocolError(f"{where}: {datatype} data must be "
                                f"{'booleans' if datatype == 'BOOL' else 'numbers'}")
        array = _in_range(flat, dtype, datatype, where) if dtype.kind in "iuf" else \
            np.array(flat, dtype=dtype)
    return array.reshape(shape), at


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


def decode_infer_request(body: bytes, header_length: str | None, max_decoded_bytes: int
                         ) -> tuple[dict[str, t.Any], dict[str, np.ndarray]]:
    """An infer request's JSON and its input tensors by name, in order.

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
        array, at = _tensor(spec, binary, at, index)
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


def _wanted_binary(document: dict[str, t.Any], name: str) -> bool:
    for output in document.get("outputs") or ():
        if output["name"] == name:
            parameters = output.get("parameters") or {}
            if "binary_data" in parameters:
                return bool(parameters["binary_data"])
    parameters = document.get("parameters") or {}
    return bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))


def encode_infer_response(document: dict[str, t.Any], model_name: str,
                          model_version: str | None, outputs: list[tuple[str, np.ndarray, list[int] | None]]
                          ) -> Response:
    """The infer response: ``outputs`` as ``(name, array, shape to report or None)``,
    in JSON or (as the request asks, per output or for all) binary data."""
    wanted = [o["name"] for o in document.get("outputs") or ()]
    known = {name for name, _, _ in outputs}
    missing = [name for name in wanted if name not in known]
    if missing:
        raise ProtocolError(f"no output named {', '.join(map(repr, missing))}; the model "
                            f"answers {', '.join(sorted(known))}")
    entries, chunks = [], []
    for name, array, shape in outputs:
        if wanted and name not in wanted:
            continue
        datatype = datatype_of(array)
        entry: dict[str, t.Any] = {"name": name, "datatype": datatype,
                                   "shape": list(shape if shape is not None else array.shape)}
        if _wanted_binary(document, name):
            if datatype == "BYTES":
                raw = b"".join(struct.pack("<I", len(b)) + b
                               for b in (_as_bytes(x) for x in array.ravel()))
            else:
                raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [_as_bytes(x).decode("utf-8", "replace") for x in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    answer: dict[str, t.Any] = {"model_name": model_name}
    if model_version is not None:
        answer["model_version"] = model_version
    if isinstance(document.get("id"), str):
        answer["id"] = document["id"]
    answer["outputs"] = entries
    head = json.dumps(answer).encode("utf-8")
    if not chunks:
        return Response(head, content_type="application/json")
    response = Response(b"".join([head, *chunks]), content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(head))
    return response


def _as_bytes(value: t.Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


# -- the models behind the routes ---------------------------------------------------


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


def _arrays_of(payload: bytes, media_type: str) -> list[tuple[str, np.ndarray]]:
    """Our pipeline's answer as output tensors."""
    bare = media_type.partition(";")[0].strip().lower()
    try:
        if bare == "application/x-npy":
            return [("output-0", np.load(io.BytesIO(payload), allow_pickle=False))]
        if bare == "application/x-npz":
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                return [(name, archive[name]) for name in archive.files]
        if bare.endswith("json"):
            return [("output-0", np.asarray(json.loads(payload)))]
    except Exception as exc:
        raise errors.ModelError(f"the model's {bare} answer cannot be read as tensors: "
                                f"{type(exc).__name__}", stage="encode") from None
    raise errors.ModelError(f"the model answered {bare}, which is not tensors (NPY, NPZ or "
                            f"JSON)", stage="encode")


class KServe(Protocol):
    """KServe's v1 and v2 REST protocols (see the module)."""

    name = "KServe"
    error_paths = ("/v1/", "/v2/", "/v2")

    def error_body(self, error: errors.ServingError, request_id: str | None) -> dict[str, t.Any]:
        return {"error": error.message}  # KServe's protocols' errors

    def routes(self) -> Blueprint:
        routes = Blueprint("kserve", __name__)
        # A model name is one path segment without ":" (v1's ":predict" follows it).
        routes.record_once(lambda state: state.app.url_map.converters.setdefault(
            "model", _ModelName))
        self._v1(routes)
        self._v2(routes)
        return routes

    # -- what both versions do, through the invocation service --------------------------

    def model(self, name: str, version: str | None = None) -> Pipeline:
        return self.server.invocations.model(name, version)

    def read_body(self) -> bytes:
        return self.server.body(request.environ)

    def invoke(self, pipeline: Pipeline, body: bytes, content_type: str,
               accept: str) -> tuple[bytes, str]:
        """One invocation this protocol made up: the answer whole (it cannot be chunks)."""
        server = self.server
        answer = server.invocations.invoke(pipeline, server.invocation(
            request.environ, body, content_type, accept, streams=False))
        return t.cast(bytes, answer.body), answer.media_type

    def handler_call(self, pipeline: Pipeline, rows: list[t.Any]) -> t.Any:
        """A TorchServe handler on ``rows`` (its KServe envelope), through its pipeline:
        the handler's answers as they are."""
        server = self.server
        answer = server.invocations.invoke(pipeline, server.invocation(
            request.environ, b"", None, None, streams=False, data=HandlerCall(rows), raw=True))
        return answer.body

    def _v1(self, routes: Blueprint) -> None:
        models, limit = self.server.models, self.server.limits.max_decoded_bytes
        model, read_body, invoke = self.model, self.read_body, self.invoke
        handler_call = self.handler_call

        def ready(pipeline: Pipeline) -> bool:
            return pipeline.ready

        def loaded() -> list[str]:
            return [m["modelName"] for m in models.page(None, 1000)["models"]]

        @routes.get("/")
        def v1_live() -> Response:
            # KServe's model server answers its v1 liveness here, and its client
            # (InferenceRESTClient.is_server_live) asks nowhere else.
            return Response(json.dumps({"status": "alive"}), content_type="application/json")

        @routes.get("/v1/models")
        def v1_models() -> Response:
            return Response(json.dumps({"models": loaded()}), content_type="application/json")

        @routes.get("/v1/models/<model:name>")
        def v1_model(name: str) -> Response:
            return Response(json.dumps({"name": name, "ready": ready(model(name))}),
                            content_type="application/json")

        @routes.post("/v1/models/<model:name>:predict")
        def v1_predict(name: str) -> Response:
            pipeline = model(name)
            document = json_document(read_body(), limit, "the request",
                                     error=ProtocolError)
            if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
                raise ProtocolError('the request must be an object with "instances": a list')
            instances = document["instances"]
            if pipeline.archive is not None:
                predictions = handler_call(pipeline, instances)
            else:
                payload, media_type = invoke(pipeline, _instances_body(instances),
                                             "application/json", "application/json")
                try:
                    predictions = json.loads(payload)
                except ValueError:
                    raise errors.ModelError(f"the model's answer ({media_type}) is not JSON",
                                            stage="encode") from None
            return Response(json.dumps({"predictions": predictions}),
                            content_type="application/json")

    def _v2(self, routes: Blueprint) -> None:
        from serving import __version__ as server_version

        models, model, read_body = self.server.models, self.model, self.read_body

        def ready(pipeline: Pipeline) -> bool:
            return pipeline.ready

        @routes.get("/v2")
        def v2_server() -> Response:
            return Response(json.dumps({"name": "serving-toolkit", "version": server_version,
                                        "extensions": ["binary_tensor_data"]}),
                            content_type="application/json")

        @routes.get("/v2/health/live")
        def v2_live() -> Response:
            return Response(json.dumps({"live": True}), content_type="application/json")

        @routes.get("/v2/health/ready")
        def v2_ready() -> Response:
            if not models.ready:
                raise errors.ServiceUnavailable("the models are still loading")
            return Response(json.dumps({"ready": True}), content_type="application/json")

        @routes.get("/v2/models/<name>")
        @routes.get("/v2/models/<name>/versions/<version>")
        def v2_metadata(name: str, version: str | None = None) -> Response:
            pipeline = model(name, version)
            archive = pipeline.archive
            metadata = {"name": name,
                        "versions": [archive.version] if archive and archive.version else [],
                        "platform": "torchserve" if archive else (pipeline.framework_name or
                                                                  "python"),
                        "inputs": [], "outputs": []}
            return Response(json.dumps(metadata), content_type="application/json")

        @routes.get("/v2/models/<name>/ready")
        @routes.get("/v2/models/<name>/versions/<version>/ready")
        def v2_model_ready(name: str, version: str | None = None) -> Response:
            pipeline = model(name, version)
            if not ready(pipeline):
                raise errors.ServiceUnavailable(f"model {name} is still loading")
            return Response(json.dumps({"name": name, "ready": True}),
                            content_type="application/json")

        @routes.post("/v2/models/<name>/infer")
        @routes.post("/v2/models/<name>/versions/<version>/infer")
        def v2_infer(name: str, version: str | None = None) -> Response:
            pipeline = model(name, version)
            document, tensors = decode_infer_request(read_body(),
                                                     request.headers.get(HEADER_LENGTH),
                                                     self.server.limits.max_decoded_bytes)
            archive = pipeline.archive
            outputs = (self._handler_outputs(pipeline, name, document, tensors)
                       if archive is not None else self._model_outputs(pipeline, tensors))
            return encode_infer_response(document, name, archive.version if archive else None,
                                         outputs)

    def _handler_outputs(self, pipeline: Pipeline, name: str, document: dict[str, t.Any],
                         tensors: dict[str, np.ndarray]
                         ) -> list[tuple[str, np.ndarray, list[int] | None]]:
        """A TorchServe handler's answer to v2 inputs, in TorchServe's v2 envelope: an item
        per input, an output per answer, named after its input and flattened."""
        items = [{"name": n, "shape": list(a.shape), "datatype": spec["datatype"],
                  "data": (a.ravel()[0].decode("utf-8", "replace")
                           if spec["datatype"] == "BYTES" and a.size else a.tolist())}
                 for (n, a), spec in zip(tensors.items(), document["inputs"])]
        answers = self.handler_call(pipeline, items)
        names = list(tensors)
        if len(answers) > len(names):
            raise errors.ModelError(f"the {name} handler answered {len(answers)} times "
                                    f"to {len(names)} input(s)", stage="predict")
        outputs: list[tuple[str, np.ndarray, list[int] | None]] = []
        for output_name, answer in zip(names, answers):
            try:
                flat = np.asarray(answer).ravel()
            except Exception:
                raise errors.ModelError(f"the {name} handler's answer is not a tensor",
                                        stage="encode") from None
            outputs.append((output_name, flat, [flat.size]))
        return outputs

    def _model_outputs(self, pipeline: Pipeline, tensors: dict[str, np.ndarray]
                       ) -> list[tuple[str, np.ndarray, list[int] | None]]:
        """Our hosting functions' answer to v2 inputs: one input as an NPY body, several as
        an NPZ body keyed by name; the answer read back as arrays."""
        limit = self.server.limits.max_decoded_bytes
        buffer = io.BytesIO()
        if len(tensors) == 1:
            (array,) = tensors.values()
            np.save(buffer, _npy(array, limit), allow_pickle=False)
            body, content_type = buffer.getvalue(), "application/x-npy"
        else:
            np.savez(buffer, **{n: _npy(a, limit) for n, a in tensors.items()})
            body, content_type = buffer.getvalue(), "application/x-npz"
        payload, media_type = self.invoke(pipeline, body, content_type,
                                          "application/x-npy, application/x-npz, "
                                          "application/json;q=0.5")
        return [(n, a, None) for n, a in _arrays_of(payload, media_type)]


def _instances_body(instances: list[t.Any]) -> bytes:
    """v1's instances as the JSON body our hosting functions read."""
    try:
        return orjson.dumps(instances)
    except TypeError as exc:  # orjson nests 254 deep when writing: deeper is refused
        raise ProtocolError(f"the instances cannot be passed on as JSON: {exc}") from None


class _ModelName(BaseConverter):
    regex = "[^/:]+"
