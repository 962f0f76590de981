"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), as KServe's and
Triton's gRPC clients call it: health, server and model metadata, model readiness,
``ModelInfer`` with typed contents or raw contents, and the model repository extension
(:mod:`~serving.protocols.kserve.repository`) — on its own port (``--grpc-port``), in
every worker, through the same invocation service as REST.

The service's messages and stubs are Triton's (``tritonclient.grpc.service_pb2``, generated
by NVIDIA from the protocol's ``.proto``; KServe's ``grpc_predict_v2.proto`` is the same
service and messages under the same names, so its clients talk to it too): nothing here is a
hand copy of the wire format. Triton's calls beyond the protocol (model configuration,
statistics, shared memory, tracing, logging) answer UNIMPLEMENTED.

**Started after fork.** grpcio's threads and polling do not survive ``fork()``; so nothing
of grpc is imported until a worker calls :meth:`KServeGrpc.beside` (the gunicorn host does
once it runs): the master never imports it. Each worker binds the port with SO_REUSEPORT
(grpcio's default on Linux), so the kernel spreads connections over the workers as it does
for the HTTP listener, and a worker that restarts binds it again.

**The same invocation path**: each ``ModelInfer`` is an :class:`~serving.contract.invocation.
Invocation` (``x-request-id`` metadata as its id, its metadata as its headers), so limits,
batching, stage metrics and error translation are the REST ones. The deadline is the server's
(``--request-timeout``), or the client's gRPC deadline when that comes first. The largest
message taken is ``--max-payload-mb`` (grpcio answers RESOURCE_EXHAUSTED past it). Errors
take the gRPC status KServe's server gives them (400 INVALID_ARGUMENT, 404 NOT_FOUND, 503
UNAVAILABLE, 504 DEADLINE_EXCEEDED, 413 and 429 RESOURCE_EXHAUSTED, else INTERNAL), their
message ours; each call is counted in the request metrics (route
``/inference.GRPCInferenceService/<method>``, the status its HTTP equivalent) and has an
access line.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

import numpy as np
from werkzeug.datastructures import Headers

from serving import __version__ as server_version
from serving import errors
from serving.contract.invocation import Invocation
from serving.protocols.base import REQUEST_ID_HEADERS, Protocol, request_id_of
from serving.protocols.kserve import KServe
from serving.protocols.kserve import models as model_calls
from serving.protocols.kserve.repository import Repository
from serving.protocols.kserve.tensors import (
    Output,
    ProtocolError,
    datatype_of,
    from_raw,
    from_values,
    select_outputs,
    shape_of,
    to_raw,
    to_values,
)
from serving.runtime import logs

if t.TYPE_CHECKING:
    from serving.contract.pipeline import Pipeline

__all__ = ["KServeGrpc", "SERVICE"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: Where each datatype's elements are in ``InferTensorContents`` (FP16 has no field: raw
#: contents only, as in Triton).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
#: The request metadata a call's id is taken from (the HTTP headers', lower-case).
ID_KEYS = tuple(header.lower() for header in REQUEST_ID_HEADERS)
#: A worker's gRPC server lets in-flight calls finish this long when it stops, at most.
STOP_GRACE_SECONDS = 30.0


def grpc_code(status: int) -> str:
    """The gRPC status name of an HTTP status, as KServe's server maps its errors."""
    return {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
            406: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
            422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED"}.get(status, "INVALID_ARGUMENT" if 400 <= status < 500
                                          else "INTERNAL")


class KServeGrpc(Protocol):
    """The gRPC side of the Open Inference Protocol: no routes on the main port, a server of
    its own in each worker (see the module)."""

    name = "KServe gRPC"

    def routes(self) -> None:
        return None

    def beside(self) -> GrpcServer | None:
        port = self.server.config.grpc_port
        if port is None:
            return None
        return GrpcServer(self, self.server.config.host, port)


class GrpcServer:
    """One worker's gRPC server, started when made; :meth:`stop` ends it."""

    def __init__(self, protocol: KServeGrpc, host: str, port: int) -> None:
        from concurrent import futures

        import grpc
        from tritonclient.grpc import service_pb2_grpc

        server = protocol.server
        config = server.config
        limit = server.limits.max_payload_bytes
        self.grpc_server = grpc.server(
            # As many calls at once as the HTTP side answers (its threads, and the ones
            # batching adds, so that a batch can fill).
            futures.ThreadPoolExecutor(max_workers=config.concurrency,
                                       thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 1)],
            maximum_concurrent_rpcs=config.max_connections)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            _servicer(server, grpc, service_pb2_grpc), self.grpc_server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = self.grpc_server.add_insecure_port(address)
        if not bound:
            raise errors.StartupError(f"gRPC cannot listen on {address}")
        self.grpc_server.start()
        log.info("KServe gRPC (Open Inference Protocol) on %s", address)

    def stop(self, grace: float) -> threading.Event:
        """Take no new call; let the ones in flight finish within ``grace`` seconds: an
        event set once they have."""
        return self.grpc_server.stop(min(grace, STOP_GRACE_SECONDS))


#: The service's methods this server answers, and the :class:`Calls` method of each.
METHODS = {"ServerLive": "server_live", "ServerReady": "server_ready",
           "ModelReady": "model_ready", "ServerMetadata": "server_metadata",
           "ModelMetadata": "model_metadata", "ModelInfer": "model_infer",
           "RepositoryIndex": "repository_index", "RepositoryModelLoad": "repository_load",
           "RepositoryModelUnload": "repository_unload"}


def _servicer(server: t.Any, grpc: t.Any, stubs: t.Any) -> t.Any:
    """The servicer: Triton's generated base class (whose other methods answer
    UNIMPLEMENTED), each of :data:`METHODS` one counted, logged call of :class:`Calls` (made
    here, where grpc and the stubs are imported: in the worker)."""
    calls = Calls(server)
    front = Front(server, grpc)
    return type("Servicer", (stubs.GRPCInferenceServiceServicer,), {
        method: staticmethod(front.call(method, getattr(calls, name)))
        for method, name in METHODS.items()})()


class Front:
    """What every call goes through, as the HTTP front door does for a request: its id (in
    the log context and the trailing metadata), the guards, its error as a gRPC status, the
    metrics and the access line."""

    def __init__(self, server: t.Any, grpc: t.Any) -> None:
        self.grpc = grpc
        self.guards = server.guards
        self.metrics = server.metrics

    def call(self, method: str, body: t.Callable[[t.Any, t.Any, str], t.Any]
             ) -> t.Callable[[t.Any, t.Any], t.Any]:
        route = f"/{SERVICE}/{method}"

        def run(request: t.Any, context: t.Any) -> t.Any:
            arrived = time.monotonic()
            metadata = dict(context.invocation_metadata())
            rid = request_id_of(metadata.get(k) for k in ID_KEYS)
            token = logs.request_id.set(rid)
            status, code = 200, "OK"
            try:
                context.set_trailing_metadata((("x-request-id", rid),))
                _guarded(self.guards, route, metadata)
                return body(request, context, rid)
            except Refused as exc:
                status, code, message = exc.status_code, "UNAUTHENTICATED", exc.message
            except errors.ServingError as exc:
                status, code, message = exc.status_code, grpc_code(exc.status_code), exc.message
            except Exception as exc:  # a bug of ours: as the HTTP front door, a 500
                log.exception("unhandled error on gRPC %s", method)
                status, code = 500, "INTERNAL"
                message = f"internal error: {type(exc).__name__}"
            finally:
                self.finish(route, status, code, context.peer(), time.monotonic() - arrived)
                logs.request_id.reset(token)
            context.abort(getattr(self.grpc.StatusCode, code), message)

        run.__name__ = method
        return run

    def finish(self, route: str, status: int, code: str, peer: str, elapsed: float) -> None:
        if self.metrics is not None:
            self.metrics.request_done(route, status, "application/grpc", elapsed)
        if logs.access_log.isEnabledFor(logging.INFO):
            logs.access_line(logging.INFO, '%s "GRPC %s" %s %.1fms', peer, route, code,
                             elapsed * 1000,
                             fields={"status": status, "grpc_status": code,
                                     "latency_ms": round(elapsed * 1000, 3),
                                     "method": "GRPC", "path": route, "remote": peer})


class Calls:
    """The service's methods (:data:`METHODS`): ``(request, context, request id)`` → the
    response message, or a :class:`~serving.errors.ServingError`."""

    def __init__(self, server: t.Any) -> None:
        from tritonclient.grpc import service_pb2

        self.pb = service_pb2
        self.server = server
        self.repository = Repository(server)
        self.extensions = KServe(server).extensions()

    def model(self, name: str, version: str) -> Pipeline:
        if not name:
            raise ProtocolError("the model's name is missing")
        return self.server.invocations.model(name, version or None)

    def server_live(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        return self.pb.ServerLiveResponse(live=True)

    def server_ready(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        return self.pb.ServerReadyResponse(ready=self.server.models.ready)

    def model_ready(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        return self.pb.ModelReadyResponse(
            ready=self.model(request.name, request.version).ready)

    def server_metadata(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        return self.pb.ServerMetadataResponse(name="serving-toolkit", version=server_version,
                                              extensions=self.extensions)

    def model_metadata(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        found = model_calls.metadata(self.model(request.name, request.version), request.name)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=found["name"], versions=found["versions"], platform=found["platform"],
            inputs=[tensor(**spec) for spec in found["inputs"]],
            outputs=[tensor(**spec) for spec in found["outputs"]])

    def model_infer(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        server = self.server
        pipeline = self.model(request.model_name, request.model_version)
        tensors, datatypes = _inputs(request, server.limits.max_decoded_bytes)
        remaining = context.time_remaining()
        deadline = server.invocations.caller.deadline_seconds
        # The client's deadline, when it comes before ours: the invocation is made to have
        # arrived that much earlier, so that its deadline (arrival + ours) is the client's.
        arrived = time.monotonic()
        if remaining is not None and remaining < deadline:
            arrived -= deadline - remaining
        # The call's metadata as the model's context shows headers (any case; binary
        # "-bin" entries left out).
        headers = Headers([(k, v) for k, v in context.invocation_metadata()
                           if isinstance(v, str)])

        def ask(body: bytes, content_type: str | None, accept: str | None,
                **more: t.Any) -> Invocation:
            return Invocation(body, content_type, accept, headers, request_id=rid,
                              arrived=arrived, **more)

        outputs = model_calls.infer(server, pipeline, ask, request.model_name, tensors,
                                    datatypes)
        chosen = select_outputs([o.name for o in request.outputs], outputs)
        raw = bool(request.raw_input_contents) or any(
            datatype_of(array) == "FP16" for _, array, _ in chosen)
        return _response(self.pb, request, pipeline, chosen, raw)

    def repository_index(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        self.repository.check_client(_peer_address(context.peer()))
        entry = self.pb.RepositoryIndexResponse.ModelIndex
        return self.pb.RepositoryIndexResponse(models=[
            entry(**found) for found in self.repository.index(ready_only=request.ready)])

    def repository_load(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        self.repository.check_client(_peer_address(context.peer()))
        self.repository.load(request.model_name)
        return self.pb.RepositoryModelLoadResponse()

    def repository_unload(self, request: t.Any, context: t.Any, rid: str) -> t.Any:
        self.repository.check_client(_peer_address(context.peer()))
        self.repository.unload(request.model_name)
        return self.pb.RepositoryModelUnloadResponse()


#: What one typed element costs once decoded, at most: a Python object's reference in the
#: list it is read into (8 bytes) and its array element (8): counted against
#: ``--max-decoded-mb`` before the list is made. (The message itself is bounded by
#: ``--max-payload-mb``; a packed BOOL is 1 byte on the wire and 16 here.)
TYPED_ELEMENT_BYTES = 16


def _inputs(request: t.Any, max_decoded_bytes: int
            ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A ModelInferRequest's input tensors by name, and their datatypes: from raw contents
    (one per input, in order) or typed contents, never both. Typed contents are refused
    (413) before they are read when their elements would decode past the limit."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents: "
                            f"one per input, in order")
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    if not raw:
        elements = sum(len(getattr(spec.contents, field)) for spec in request.inputs
                       for field in set(CONTENTS.values()))
        held = sum(len(b) for spec in request.inputs for b in spec.contents.bytes_contents)
        if elements * TYPED_ELEMENT_BYTES + held > max_decoded_bytes:
            raise errors.DecodedTooLarge(f"typed contents of {elements} elements",
                                         max_decoded_bytes)
    tensors: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, spec in enumerate(request.inputs):
        name = spec.name
        where = f"input {name!r}" if name else f"inputs[{index}]"
        if not name:
            raise ProtocolError(f"{where}: name must be a non-empty string")
        if name in tensors:
            raise ProtocolError(f"input {name!r} appears twice")
        shape = shape_of(list(spec.shape), where)
        if raw:
            if spec.HasField("contents"):
                raise ProtocolError(f"{where}: has contents and raw_input_contents")
            array = from_raw(raw[index], spec.datatype, shape, where)
        else:
            field = CONTENTS.get(spec.datatype)
            if field is None and spec.datatype == "FP16":
                raise ProtocolError(f"{where}: FP16 has no typed contents: send it in "
                                    f"raw_input_contents")
            values = list(getattr(spec.contents, field)) if field is not None else []
            array = from_values(values, spec.datatype, shape, where)
        tensors[name], datatypes[name] = array, spec.datatype
    return tensors, datatypes


def _response(pb: t.Any, request: t.Any, pipeline: Pipeline, outputs: list[Output],
              raw: bool) -> t.Any:
    """The ModelInferResponse: raw contents when the request sent raw ones (or an output is
    FP16, which has no typed field), else typed contents."""
    response = pb.ModelInferResponse(model_name=request.model_name,
                                     model_version=pipeline.version, id=request.id)
    for name, array, shape in outputs:
        datatype = datatype_of(array)
        entry = response.outputs.add(name=name, datatype=datatype,
                                     shape=list(shape if shape is not None else array.shape))
        if raw:
            response.raw_output_contents.append(to_raw(array, datatype))
        else:
            getattr(entry.contents, CONTENTS[datatype]).extend(to_values(array, datatype))
    return response


def _peer_address(peer: str) -> str | None:
    """The IP address in grpc's peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``);
    ``None`` for another kind (a Unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return None


class Refused(errors.ClientError):
    """A call a guard stopped (TorchServe's inference key missing or wrong)."""


def _guarded(guards: t.Sequence[t.Callable[[dict[str, t.Any]], None]], route: str,
             metadata: t.Mapping[str, t.Any]) -> None:
    """The guards every request of the main port passes (TorchServe's inference key, on a
    model store's server), on a gRPC call: its ``authorization`` metadata as the header."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": route,
               "HTTP_AUTHORIZATION": metadata.get("authorization")}
    try:
        for guard in guards:
            guard(environ)
    except errors.ServingError as exc:
        raise Refused(exc.message, status_code=exc.status_code
                      if 400 <= exc.status_code < 500 else 401) from None
