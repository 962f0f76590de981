"""Drive a running server's gRPC port with KServe's own client (``kserve.InferenceGRPCClient``)
and KServe's generated stubs for the Open Inference Protocol.

Runs in its own environment (``.venv-kserve``), as a user's client would. Usage:

    python kserve_grpc_client.py HOST:PORT MODEL

MODEL doubles numbers and upper-cases bytes. Prints one JSON object: what came back, in
plain JSON types, for the test to check.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb


def output(response) -> dict:
    (first,) = response.outputs
    return {"datatype": first.datatype, "shape": list(first.shape),
            "data": [x.decode() if isinstance(x, bytes) else x
                     for x in first.as_numpy().tolist()] if first.datatype == "BYTES"
            else first.as_numpy().tolist()}


def tensor(name: str, array: np.ndarray, datatype: str) -> InferInput:
    item = InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=False)
    return item


async def main(url: str, model: str) -> dict:
    out: dict = {}
    client = InferenceGRPCClient(url, timeout=30)
    out["live"] = await client.is_server_live()
    out["ready"] = await client.is_server_ready()
    out["model_ready"] = await client.is_model_ready(model)
    metadata = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    out["metadata"] = {"name": metadata.name, "versions": list(metadata.versions),
                       "platform": metadata.platform}
    x = np.array([[1.5, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    out["fp32"] = output(await client.infer(InferRequest(model, [tensor("x", x, "FP32")])))
    wide = np.arange(4, dtype=np.int64).reshape(2, 2)
    out["int64"] = output(await client.infer(InferRequest(model, [tensor("x", wide, "INT64")])))
    words = np.array([b"ab", b"c"], dtype=np.object_)
    out["bytes"] = output(await client.infer(InferRequest(model, [tensor("x", words, "BYTES")])))
    try:
        await client.infer(InferRequest("no-such-model", [tensor("x", x, "FP32")]))
        out["unknown"] = "answered"
    except grpc.RpcError as exc:
        out["unknown"] = f"{exc.code().name}: {exc.details()}"
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
