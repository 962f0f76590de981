"""Request ids, structured logs and the SageMaker request headers, on a real server."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.server_helpers import write_model_dir

# input_fn and predict_fn log with the standard library, as users' scripts do: their lines
# must carry the id of the request that caused them. predict_fn answers with what the
# context says, and sets custom attributes on the answer.
USER_CODE = """
    import json
    import logging

    import serving

    log = logging.getLogger("user.inference")

    def model_fn(model_dir):
        return None

    def input_fn(body, content_type, context):
        log.info("decoding %d bytes", len(body))
        return json.loads(body)

    def predict_fn(data, model, context):
        log.warning("predicting %s", data)
        if data == "attributes":
            context.set_custom_attributes("seen=" + (context.custom_attributes or "none"))
        return {"request_id": context.request_id, "inference_id": context.inference_id,
                "target_variant": context.target_variant,
                "custom_attributes": context.custom_attributes}
"""


def user_server(serve, tmp_path, *flags):
    return serve(write_model_dir(tmp_path, USER_CODE), "--workers", "1", *flags)


def test_sent_id_is_echoed_and_in_every_log_line_of_the_request(serve, tmp_path):
    server = user_server(serve, tmp_path)
    response = requests.post(server.url(), json="hello", headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"
    lines = [line for line in server.log.splitlines() if "[trace-42]" in line]
    # The user's two lines (HTTP thread → prediction thread) and the access line.
    assert any("user.inference: decoding 7 bytes" in line for line in lines), server.log
    assert any("user.inference: predicting hello" in line for line in lines), server.log
    assert any('serving.access: 127.0.0.1 "POST /invocations" 200' in line for line in lines)


def test_inference_id_wins_and_reaches_the_context(serve, tmp_path):
    server = user_server(serve, tmp_path)
    response = requests.post(server.url(), json="x", headers={
        "X-Request-Id": "second", "X-Amzn-SageMaker-Inference-Id": "first",
        "X-Amzn-SageMaker-Target-Variant": "variant-b"})
    assert response.headers["X-Request-Id"] == "first"
    assert response.json() == {"request_id": "first", "inference_id": "first",
                               "target_variant": "variant-b", "custom_attributes": None}
    third = requests.post(server.url(), json="x", headers={"X-Amzn-RequestId": "third"})
    assert third.headers["X-Request-Id"] == "third"


def test_generated_ids_are_unique_and_bad_ids_replaced(serve, tmp_path):
    server = user_server(serve, tmp_path)
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: requests.post(server.url(), json="x").headers["X-Request-Id"],
                            range(60)))
    assert len(set(ids)) == 60 and all(len(i) == 32 for i in ids)
    # An id that could forge a log line or a header (a space, too long) is not used.
    for bad in ("two words", "x" * 201):
        response = requests.post(server.url(), json="x", headers={"X-Request-Id": bad})
        assert response.headers["X-Request-Id"] not in (bad, "")
        assert bad not in server.log


def test_error_bodies_carry_the_id(serve, tmp_path):
    server = user_server(serve, tmp_path, "--max-payload-mb", "0.001")
    response = requests.post(server.url(), data=b"{", headers={"X-Request-Id": "bad-json"})
    assert response.status_code == 500  # input_fn raised: user code's failure
    assert response.json()["request_id"] == "bad-json"
    assert response.headers["X-Request-Id"] == "bad-json"
    # Refused by the worker loop before the app: 413 on the declared length.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Request-Id: too-big\r\n"
                     b"Content-Length: 999999\r\n\r\n")
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413") and "X-Request-Id: too-big\r\n" in answer
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["request_id"] == "too-big"
    assert "[too-big] serving.access" in server.log


def test_json_logs(serve, tmp_path):
    server = user_server(serve, tmp_path, "--log-format", "json")
    requests.post(server.url(), json="hi", headers={"X-Request-Id": "json-1"})
    requests.get(server.url("/ping"))
    server.terminate()
    records = [json.loads(line) for line in server.log.splitlines() if line.strip()]
    mine = [r for r in records if r.get("request_id") == "json-1"]
    assert {"user.inference", "serving.access"} <= {r["logger"] for r in mine}
    access = next(r for r in mine if r["logger"] == "serving.access")
    assert access["status"] == 200 and access["latency_ms"] > 0
    assert access["method"] == "POST" and access["path"] == "/invocations"
    assert access["worker"] == 0 and access["level"] == "INFO"
    assert access["time"].endswith("Z")
    # gunicorn's own lines are JSON too; /ping is not logged at INFO.
    assert any(r["logger"] == "gunicorn.error" for r in records)
    assert not any(r.get("path") == "/ping" for r in records)


def test_custom_attributes_both_ways(serve, tmp_path):
    server = user_server(serve, tmp_path)
    response = requests.post(server.url(), json="attributes",
                             headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=1; tier=gold"})
    assert response.json()["custom_attributes"] == "trace=1; tier=gold"
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "seen=trace=1; tier=gold"
    plain = requests.post(server.url(), json="other")
    assert "X-Amzn-SageMaker-Custom-Attributes" not in plain.headers
    too_long = requests.post(server.url(), json="x",
                             headers={"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025})
    assert too_long.status_code == 400
    assert "X-Amzn-SageMaker-Custom-Attributes" in too_long.json()["message"]


def test_boto3_custom_attributes_and_inference_id(serve, tmp_path):
    import boto3

    server = user_server(serve, tmp_path)
    client = boto3.client("sagemaker-runtime", endpoint_url=server.url(""),
                          region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    answer = client.invoke_endpoint(EndpointName="ep", Body=b'"attributes"',
                                    ContentType="application/json", CustomAttributes="k=v",
                                    InferenceId="inf-9", TargetVariant="blue")
    body = json.loads(answer["Body"].read())
    assert body == {"request_id": "inf-9", "inference_id": "inf-9", "target_variant": "blue",
                    "custom_attributes": "k=v"}
    assert answer["CustomAttributes"] == "seen=k=v"
