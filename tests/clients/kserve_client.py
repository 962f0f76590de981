"""Drive a running server with KServe's own Python REST client (``kserve.InferenceRESTClient``).

Runs in its own environment (``.venv-kserve``: ``kserve`` with its FastAPI, pandas and grpc
pins), as a user's client would, never in the server's. Usage:

    python kserve_client.py URL MODEL

Runs the v1 and v2 calls the client has against MODEL (whose model doubles numbers) and
prints one JSON object: what came back, in plain JSON types, for the test to check.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput
from kserve.inference_client import InferenceRESTClient, RESTConfig


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> InferInput:
    item = InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def outputs(response) -> dict:
    return {o.name: {"datatype": o.datatype, "shape": list(o.shape),
                     "data": o.as_numpy().tolist()} for o in response.outputs}


async def v2(url: str, model: str) -> dict:
    out: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        out["unknown_ready"] = await client.is_model_ready(url, "no-such-model")
        x = np.array([[1.5, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
        for binary in (False, True):
            request = InferRequest(model, [tensor("x", x, "FP32", binary)], request_id="r-1",
                                   parameters={"binary_data_output": binary})
            response = await client.infer(url, request, model_name=model)
            out["binary" if binary else "json"] = {"id": response.id,
                                                   "model_name": response.model_name,
                                                   "outputs": outputs(response)}
        wide = np.arange(4, dtype=np.int64).reshape(2, 2)
        request = InferRequest(model, [tensor("x", wide, "INT64", True)],
                               request_outputs=[RequestedOutput("output-0",
                                                                {"binary_data": True})])
        out["int64"] = outputs(await client.infer(url, request, model_name=model))
        try:
            await client.infer(url, {"inputs": [{"name": "x", "shape": [2, 2],
                                                 "datatype": "FP32", "data": [1, 2, 3]}]},
                               model_name=model)
            out["bad_shape"] = None
        except httpx.HTTPStatusError as exc:
            out["bad_shape"] = {"status": exc.response.status_code, "message": str(exc)}
    return out


async def v1(url: str, model: str) -> dict:
    out: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=30)) as client:
        out["live"] = await client.is_server_live(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        out["predict"] = await client.infer(url, {"instances": [[1, 2], [3, 4]]},
                                            model_name=model)
        try:
            await client.infer(url, {"instances": [1]}, model_name="no-such-model")
            out["unknown"] = None
        except httpx.HTTPStatusError as exc:
            out["unknown"] = {"status": exc.response.status_code, "message": str(exc)}
    return out


async def main(url: str, model: str) -> dict:
    return {"v2": await v2(url, model), "v1": await v1(url, model)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
