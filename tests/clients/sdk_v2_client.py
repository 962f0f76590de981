"""Drive a running server with the SageMaker Python SDK v2 client classes.

Runs in its own environment (``.venv-sdk``: ``sagemaker<3``, numpy 2, protobuf < 7),
as a user's client would, never in the server's. Usage:

    python sdk_v2_client.py URL SCENARIO [JSON PAYLOAD]

Prints one JSON object: what came back, in plain JSON types, for the test to check.
"""

from __future__ import annotations

import io
import json
import os
import sys

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

import boto3  # noqa: E402
import numpy as np  # noqa: E402
import sagemaker  # noqa: E402
from sagemaker import deserializers, serializers  # noqa: E402
from sagemaker.amazon.common import read_records  # noqa: E402
from sagemaker.predictor import Predictor  # noqa: E402


def predictor(url: str, serializer, deserializer) -> Predictor:
    """A Predictor whose runtime client is pointed at the container, as in local testing."""
    boto_session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                 region_name="us-east-1")
    runtime = boto_session.client("sagemaker-runtime", endpoint_url=url)
    session = sagemaker.Session(boto_session=boto_session, sagemaker_runtime_client=runtime)
    return Predictor("local-endpoint", sagemaker_session=session, serializer=serializer,
                     deserializer=deserializer)


def record_rows(records) -> list:
    out = []
    for record in records:
        row = {}
        for field in ("features", "label"):
            for key, value in getattr(record, field).items():
                kind = value.WhichOneof("value")
                row[f"{field}.{key}.{kind}"] = list(getattr(value, kind).values)
        out.append(row)
    return out


def run(url: str, scenario: str, payload: str | None = None) -> dict:
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    if scenario == "json_payload":  # the JSON given on the command line, as a notebook sends it
        p = predictor(url, serializers.JSONSerializer(), deserializers.JSONDeserializer())
        return {"result": p.predict(json.loads(payload))}
    if scenario == "file_payload":  # a file's bytes, as the notebooks' ImagePredictor sends them
        spec = json.loads(payload)
        p = predictor(url, serializers.IdentitySerializer(spec["content_type"]),
                      deserializers.JSONDeserializer())
        with open(spec["path"], "rb") as f:
            return {"result": p.predict(f.read())}
    if scenario == "csv_answer":  # the JSON given, the answer read by CSVDeserializer
        p = predictor(url, serializers.JSONSerializer(), deserializers.CSVDeserializer())
        return {"result": p.predict(json.loads(payload))}
    if scenario == "numpy_payload":  # the JSON list given, sent as the NumpySerializer does
        p = predictor(url, serializers.NumpySerializer(), deserializers.NumpyDeserializer())
        result = p.predict(np.array(json.loads(payload)))
        return {"result": result.tolist(), "dtype_kind": result.dtype.kind,
                "shape": list(result.shape)}
    if scenario == "json":
        p = predictor(url, serializers.JSONSerializer(), deserializers.JSONDeserializer())
        return {"result": p.predict({"instances": [[1.5, 2], [3, 4]]}),
                "rows": p.predict([[1.5, 2], [3, 4]])}
    if scenario == "numpy":
        p = predictor(url, serializers.NumpySerializer(), deserializers.NumpyDeserializer())
        result = p.predict(array)
        sentences = np.array(["a fine film", "dull and far too long", "ünïcödé"])
        text = p.predict(sentences)
        return {"result": result.tolist(), "dtype": str(result.dtype),
                "sentences": text.tolist(), "sentences_dtype": text.dtype.kind}
    if scenario == "csv":
        p = predictor(url, serializers.CSVSerializer(), deserializers.CSVDeserializer())
        return {"result": p.predict(array.tolist())}
    if scenario == "jsonlines":
        p = predictor(url, serializers.JSONLinesSerializer(), deserializers.JSONLinesDeserializer())
        return {"result": p.predict([{"a": 1}, [1, 2], "x"]),
                "rows": p.predict(array.tolist())}
    if scenario == "record":
        p = predictor(url, serializers.RecordSerializer(), deserializers.RecordDeserializer())
        ints = np.array([[1, 2, 3], [4, 5, 600]])
        return {"float32": record_rows(p.predict(array)),
                "float64": record_rows(p.predict(array.astype(np.float64))),
                "int": record_rows(p.predict(ints))}
    if scenario == "record_raw":
        # The server's answer read with the SDK's own reader, as bytes over the wire.
        p = predictor(url, serializers.RecordSerializer(), deserializers.BytesDeserializer(
            accept="application/x-recordio-protobuf"))
        body = p.predict(array)
        return {"rows": record_rows(read_records(io.BytesIO(body)))}
    if scenario == "sparse":
        import scipy.sparse

        matrix = scipy.sparse.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 0]]))
        p = predictor(url, serializers.SparseMatrixSerializer(), deserializers.JSONDeserializer())
        return {"result": p.predict(matrix)}
    if scenario == "image":
        from PIL import Image

        pixels = np.zeros((6, 5, 3), np.uint8)
        pixels[..., 0] = 200
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        p = predictor(url, serializers.IdentitySerializer("image/png"),
                      deserializers.BytesDeserializer())
        return {"result": json.loads(p.predict(buf.getvalue()))}
    if scenario == "text":
        p = predictor(url, serializers.StringSerializer(), deserializers.StringDeserializer(
            accept="text/plain"))
        return {"result": p.predict("héllo")}
    if scenario == "npz_out":
        p = predictor(url, serializers.NumpySerializer(), deserializers.NumpyDeserializer(
            accept="application/x-npz"))
        result = p.predict(array)
        return {"files": sorted(result.files), "arr_0": result["arr_0"].tolist()}
    raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:4])))
