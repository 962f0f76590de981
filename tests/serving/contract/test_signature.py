"""A model's declared tensors: model-settings.json read as MLServer writes it, refused at start
(naming the entry) when it is not one."""

from __future__ import annotations

import json

import pytest

from serving.contract.signature import SIGNATURE_FILE, Signature, TensorSpec, read_signature
from serving.errors import StartupError


def test_mlservers_model_settings_are_read_for_their_tensors(tmp_path):
    (tmp_path / SIGNATURE_FILE).write_text(json.dumps({
        "name": "mnist", "implementation": "mlserver_sklearn.SKLearnModel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}]}))
    signature = read_signature(str(tmp_path))
    assert signature == Signature((TensorSpec("x", "FP32", (-1, 784)),),
                                  (TensorSpec("y", "INT64", (-1,)),))
    assert signature.inputs[0].fits((3, 784)) and not signature.inputs[0].fits((3, 783))
    assert not signature.inputs[0].fits((784,))


def test_no_file_or_no_tensors_is_no_signature(tmp_path):
    assert read_signature(str(tmp_path)) is None
    (tmp_path / SIGNATURE_FILE).write_text('{"name": "m", "parameters": {}}')
    assert read_signature(str(tmp_path)) is None


@pytest.mark.parametrize("document, says", [
    ('{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}', "inputs[0]: datatype"),
    ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}', "shape must be a list"),
    ('{"outputs": [{"datatype": "FP32", "shape": [1]}]}', "outputs[0]: name"),
    ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}, '
     '{"name": "x", "datatype": "FP32", "shape": [1]}]}', "names a tensor twice"),
    ('[1, 2]', "must be a JSON object"),
    ('{"inputs": ', "Expecting value"),
])
def test_a_bad_file_stops_the_start_naming_what_is_wrong(tmp_path, document, says):
    (tmp_path / SIGNATURE_FILE).write_text(document)
    with pytest.raises(StartupError) as caught:
        read_signature(str(tmp_path))
    assert says in str(caught.value)
