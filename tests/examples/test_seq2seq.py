"""examples/seq2seq: JSON instances (with attention matrices) and recordio-protobuf token ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from handlers.content.recordio import Record, read_recordio, write_recordio
from tests.examples.conftest import sdk, served_example

pytestmark = pytest.mark.mxnet

PAIRS = {"i am tired": "ich bin müde", "the cat is black": "die katze ist schwarz",
         "where is the station ?": "wo ist der bahnhof ?", "thank you": "danke"}


def one_record() -> bytes:
    """A recordio body of one record of token ids (<unk>s: a refusal ignores them)."""
    record = Record()
    record.features["source"].int32_tensor.values.extend([1, 1])
    return write_recordio([record.SerializeToString()])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_example("seq2seq", tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def model_dir(server):
    return server.model_dir


def runtime_client(server):
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=server.url(""),
                        region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


def test_the_notebooks_json_calls_as_written(server):
    # Its two boto3 calls: ContentType and Body only, the answer read as JSON.
    runtime = runtime_client(server)
    sentences = ["i am tired", "thank you"]
    payload = {"instances": []}
    for sent in sentences:
        payload["instances"].append({"data": sent})
    response = runtime.invoke_endpoint(EndpointName="seq2seq", ContentType="application/json",
                                       Body=json.dumps(payload))
    response = json.loads(response["Body"].read().decode("utf-8"))
    assert response == {"predictions": [{"target": "ich bin müde"}, {"target": "danke"}]}

    sentence = "the cat is black"
    payload = {"instances": [{"data": sentence,
                              "configuration": {"attention_matrix": "true"}}]}
    response = runtime.invoke_endpoint(EndpointName="seq2seq", ContentType="application/json",
                                       Body=json.dumps(payload))
    response = json.loads(response["Body"].read().decode("utf-8"))["predictions"][0]
    attention_matrix = np.array(response["matrix"])
    assert response["target"] == "die katze ist schwarz"
    # The notebook's plot_matrix asserts this shape.
    assert attention_matrix.shape[0] == len(response["target"].split())
    assert attention_matrix.shape[1] == len(sentence.split())


def test_json_instances_through_the_sdk(server):
    payload = {"instances": [
        {"data": "i am tired"},
        {"data": "the cat is black", "configuration": {"attention_matrix": "true"}},
    ]}
    predictions = sdk(server, "json_payload", payload)["result"]["predictions"]
    assert predictions[0] == {"target": "ich bin müde"}  # no matrix unless asked
    assert predictions[1]["target"] == "die katze ist schwarz"
    matrix = np.array(predictions[1]["matrix"])
    assert matrix.shape == (4, 4)  # a row per target word, a column per source word
    assert np.allclose(matrix.sum(axis=1), 1, atol=1e-5)


# The notebook's call sends ContentType and no Accept, and reads records back.
@pytest.mark.parametrize("accept", [None, "application/x-recordio-protobuf"])
def test_recordio_token_ids_through_boto3_in_request_order(server, model_dir, accept):
    source = json.loads((model_dir / "vocab.src.json").read_text(encoding="utf-8"))
    target = {i: w for w, i in json.loads(
        (model_dir / "vocab.trg.json").read_text(encoding="utf-8")).items()}
    sentences = list(PAIRS)
    payloads = []
    for sentence in sentences:  # as the notebook's list_to_record_bytes(sentence, [])
        record = Record()
        record.features["source"].int32_tensor.values.extend(
            [source.get(w, 1) for w in sentence.split()])
        record.features["target"].int32_tensor.values.extend([])
        payloads.append(record.SerializeToString())
    answer = runtime_client(server).invoke_endpoint(EndpointName="seq2seq", Body=write_recordio(payloads),
                                    ContentType="application/x-recordio-protobuf",
                                    **({"Accept": accept} if accept else {}))
    assert answer["ContentType"] == "application/x-recordio-protobuf"
    records = [Record.FromString(p) for p in read_recordio(answer["Body"].read())]
    got = [" ".join(target[i] for i in r.features["target"].int32_tensor.values)
           for r in records]
    assert got == [PAIRS[s] for s in sentences]


@pytest.mark.parametrize("body, content_type, accept, status", [
    ('{"instances": [{"data": "hello"}]}', "application/json",
     "application/x-recordio-protobuf", 406),
    ('{"instances": []}', "application/json", "application/json", 400),
    ('{"instances": [{"data": ""}]}', "application/json", "application/json", 400),
    ('{"instances": [{"text": "hello"}]}', "application/json", "application/json", 400),
    ("[1, 2, 3]", "application/json", "application/json", 422),
    # Records are answered in records: an Accept that excludes them is refused.
    (one_record(), "application/x-recordio-protobuf", "application/json", 406),
])
def test_bad_requests_are_4xx(server, body, content_type, accept, status):
    response = requests.post(server.url(), data=body,
                             headers={"Content-Type": content_type, "Accept": accept})
    assert response.status_code == status and response.json()["code"] == status
