"""JSON answers write float32 predictions as AWS's containers do: widened to a double.

AWS's encoders write ``json.dumps(array.tolist())``, so a float32 prediction reaches a
client as the shortest double of its value. The client parses doubles (every JSON
library does), and a test written against those containers compares exact numbers. A
number here is right when it parses to ``float(np.float32(x))``. Checked through
``requests`` and through the SageMaker SDK's own serializers, on a real ``serve``.
"""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
import requests

from tests.eventstream_reader import read_messages
from tests.integration.test_content_types import SDK_CLIENT, SDK_PYTHON
from tests.server_helpers import write_model_dir

#: The float32 answer of AWS's MXNet default-handler test (``[[4.9999918937683105]]``).
AWS_ANSWER = np.float32(4.9999918937683105)

#: One answer per kind of value a predict_fn returns, float32 and float16 throughout.
NUMBERS_MODEL = """
    import numpy as np

    X = np.float32(4.9999918937683105)

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        kind = data["kind"]
        if kind == "array":
            return np.array([[X, 0.1], [1 / 3, 1e-7]], dtype=np.float32)
        if kind == "half":
            return np.array([0.1, 1 / 3], dtype=np.float16)
        if kind == "scalar":
            return X
        if kind == "nested":  # numpy scalars and arrays inside plain lists and dicts
            return {"scores": [np.float32(0.1), np.float16(1 / 3), X],
                    "rows": [np.array([0.1, 0.2], dtype=np.float32)],
                    "label": np.int64(3), "exact": 0.1}
        if kind == "special":
            return np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
        if kind == "stream":
            return (np.array([X, i / 3], dtype=np.float32) for i in range(3))
        raise ValueError(kind)
"""


def wide(*values, dtype=np.float32):
    """What a client parsing doubles must read: each value as ``dtype``, widened."""
    return [float(dtype(v)) for v in values]


@pytest.fixture(scope="module")
def numbers(tmp_path_factory):
    from tests.server_helpers import Server

    root = tmp_path_factory.mktemp("numbers")
    server = Server(write_model_dir(root, NUMBERS_MODEL), "--workers", "1",
                    log_path=root / "serve.log")
    server.wait_ready()
    yield server
    assert server.terminate() == 0


def ask(server, kind, accept="application/json"):
    response = requests.post(server.url(), json={"kind": kind},
                             headers={"Accept": accept}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_float32_arrays_scalars_and_nested_values_parse_to_their_widened_value(numbers):
    array = ask(numbers, "array").json()
    assert array == [wide(AWS_ANSWER, 0.1), wide(1 / 3, 1e-7)]
    assert array[0][0] == 4.9999918937683105 and array[0][1] == 0.10000000149011612
    assert ask(numbers, "half").json() == wide(0.1, 1 / 3, dtype=np.float16)
    assert ask(numbers, "scalar").content == b"4.9999918937683105"
    nested = ask(numbers, "nested").json()
    assert nested == {"scores": [*wide(0.1), *wide(1 / 3, dtype=np.float16), *wide(AWS_ANSWER)],
                      "rows": [wide(0.1, 0.2)], "label": 3, "exact": 0.1}


def test_nan_and_infinities_are_null(numbers):
    # JSON has no NaN or Infinity (json.dumps writes them anyway; strict parsers refuse).
    response = ask(numbers, "special")
    assert response.content == b"[null,null,null,1.5]"


def test_json_lines_and_streams_widen_too(numbers):
    lines = ask(numbers, "array", accept="application/jsonlines").text.splitlines()
    assert [json.loads(line) for line in lines] == [wide(AWS_ANSWER, 0.1), wide(1 / 3, 1e-7)]
    streamed = ask(numbers, "stream", accept="application/jsonlines").text.splitlines()
    assert [json.loads(line) for line in streamed] == [wide(AWS_ANSWER, i / 3) for i in range(3)]
    # The event stream SageMaker's InvokeEndpointWithResponseStream reads.
    response = requests.post(numbers.url("/endpoints/e/invocations-response-stream"),
                             json={"kind": "stream"}, timeout=30)
    assert response.status_code == 200
    parts = b"".join(payload for _, payload in read_messages(response.content))
    assert [json.loads(line) for line in parts.splitlines()] == \
        [wide(AWS_ANSWER, i / 3) for i in range(3)]


def test_the_shortest_float32_form_when_asked_for(serve, tmp_path):
    server = serve(write_model_dir(tmp_path, NUMBERS_MODEL), "--workers", "1",
                   env={"SERVING_JSON_FLOAT32": "shortest"})
    assert ask(server, "array").content == b"[[4.999992,0.1],[0.33333334,1e-7]]"
    assert ask(server, "scalar").content == b"4.999992"
    nested = ask(server, "nested").json()
    assert nested["scores"][0] == 0.1 and nested["rows"] == [[0.1, 0.2]]
    # Read back as float32, the same numbers as the widened form.
    assert np.float32(ask(server, "scalar").json()) == AWS_ANSWER


def test_csv_is_what_awss_encoder_writes(serve, tmp_path):
    """sagemaker-inference writes CSV with np.savetxt(fmt="%s"): each value's shortest
    form in its own type (a float32 stays 4.999992 there, unlike in JSON)."""
    model = write_model_dir(tmp_path, """
        import numpy as np

        VALUES = [[4.9999918937683105, 0.1, 1 / 3], [1e-7, 2.5, 1000.0]]

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return np.array(VALUES, dtype=data["dtype"])
    """)
    server = serve(model, "--workers", "1")
    values = [[4.9999918937683105, 0.1, 1 / 3], [1e-7, 2.5, 1000.0]]
    for dtype in ("float32", "float64", "float16", "int64", "bool"):
        response = requests.post(server.url(), json={"dtype": dtype},
                                 headers={"Accept": "text/csv"}, timeout=30)
        assert response.status_code == 200, response.text
        expected = io.StringIO()
        np.savetxt(expected, np.array(values, dtype=dtype), delimiter=",", fmt="%s")
        assert response.text == expected.getvalue(), dtype
        if dtype == "float32":
            assert response.text == "4.999992,0.1,0.33333334\n1e-07,2.5,1000.0\n"


def sdk(server, scenario, payload):
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: run `make install`"
    result = subprocess.run([str(SDK_PYTHON), str(SDK_CLIENT), server.url(""), scenario,
                             json.dumps(payload)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_sdk_reads_the_numbers_awss_containers_gave_it(numbers):
    # JSONSerializer / JSONDeserializer, what MXNetPredictor and PyTorchPredictor use.
    out = sdk(numbers, "json_payload", {"kind": "array"})
    assert out["result"] == [wide(AWS_ANSWER, 0.1), wide(1 / 3, 1e-7)]
    # CSVDeserializer hands back the text of each cell.
    csv_rows = sdk(numbers, "csv_answer", {"kind": "array"})["result"]
    assert csv_rows == [["4.999992", "0.1"], ["0.33333334", "1e-07"]]


@pytest.mark.mxnet
def test_awss_mxnet_default_handler_case(serve, tmp_path):
    """AWS's MXNet toolkit test_default_model_fn: an exported model served by the default
    handlers, ``predict([[1, 2]])`` answering ``[[4.9999918937683105]]``. Its bundled model
    is not ours to ship: this one is made to give the same float32 for [[1, 2]]."""
    import mxnet as mx
    from mxnet import gluon

    net = gluon.nn.Dense(1, in_units=2)
    net.initialize()
    net.weight.set_data(mx.nd.array([[1.0, 2.0]]))
    net.bias.set_data(mx.nd.array([float(AWS_ANSWER) - 5.0]))
    net.hybridize()
    got = net(mx.nd.array([[1.0, 2.0]])).asnumpy()
    assert got.dtype == np.float32 and got[0, 0] == AWS_ANSWER  # the model is as intended
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    net.export(str(model_dir / "model"))

    server = serve(model_dir, "--workers", "1")
    response = requests.post(server.url(), json=[[1, 2]], timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == [[4.9999918937683105]]
    assert sdk(server, "json_payload", [[1, 2]])["result"] == [[4.9999918937683105]]
