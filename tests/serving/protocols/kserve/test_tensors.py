"""The Open Inference Protocol's tensors, whatever carries them: every way in refuses the same
things with the same 400, raw and typed contents make the same arrays, and declared inputs
are held to their names, datatypes and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from serving.contract.signature import Signature
from serving.protocols.kserve.tensors import (
    ProtocolError,
    check_inputs,
    decode_infer_request,
    encode_infer_response,
    from_raw,
    from_values,
    select_outputs,
    to_raw,
    to_values,
)


@pytest.mark.parametrize("datatype, values", [
    ("FP32", [1.5, -2.0, 3.25]), ("FP64", [1e300, 0.0, -1.0]), ("FP16", [0.5, 65504.0, -2.0]),
    ("INT8", [-128, 0, 127]), ("INT64", [-2**63, 0, 2**63 - 1]), ("UINT8", [0, 1, 255]),
    ("UINT64", [0, 1, 2**64 - 1]), ("BOOL", [True, False, True]),
    ("BYTES", [b"ab", b"", "\u00e9".encode()]),
])
def test_raw_and_typed_contents_make_the_same_array(datatype, values):
    typed = from_values(values, datatype, (3,), "x")
    again = from_raw(to_raw(typed, datatype), datatype, (3,), "x")
    assert typed.dtype == again.dtype
    assert list(to_values(typed, datatype)) == list(to_values(again, datatype))


@pytest.mark.parametrize("call, says", [
    (lambda: from_values([1, 2, 3], "FP32", (2, 2), "x"), "holds 4 elements, the data 3"),
    (lambda: from_values([300], "UINT8", (1,), "x"), "UINT8 holds 0 to 255, not 300"),
    (lambda: from_values([1e39], "FP32", (1,), "x"), "beyond FP32's range"),
    (lambda: from_values([True], "INT32", (1,), "x"), "INT32 data must be numbers"),
    (lambda: from_values([1], "BYTES", (1,), "x"), "BYTES data must be strings"),
    (lambda: from_values([1], "FP8", (1,), "x"), "datatype 'FP8' is not one of"),
    (lambda: from_raw(b"\0" * 7, "FP32", (2,), "x"), "takes 8 bytes, not 7"),
    (lambda: from_raw(b"\5\0\0\0ab", "BYTES", (1,), "x"), "ends inside an element"),
])
def test_every_way_in_refuses_with_a_400(call, says):
    with pytest.raises(ProtocolError) as caught:
        call()
    assert caught.value.status_code == 400 and says in caught.value.message


def test_rest_binary_extension_and_json_decode_alike():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    head = b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 3], ' \
           b'"parameters": {"binary_data_size": 48}}]}'
    _, binary = decode_infer_request(head + x.tobytes(), str(len(head)), 1 << 20)
    _, as_json = decode_infer_request(
        b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 3], '
        b'"data": [[0, 1, 2], [3, 4, 5]]}]}', None, 1 << 20)
    np.testing.assert_array_equal(binary["x"], x)
    np.testing.assert_array_equal(as_json["x"], x)


def test_outputs_are_chosen_by_name_and_an_unknown_one_is_a_400():
    outputs = [("a", np.zeros(1), None), ("b", np.ones(1), None)]
    assert [o[0] for o in select_outputs([], outputs)] == ["a", "b"]
    assert [o[0] for o in select_outputs(["b"], outputs)] == ["b"]
    with pytest.raises(ProtocolError, match="no output named 'c'; the model answers a, b"):
        select_outputs(["c"], outputs)
    body, headers = encode_infer_response({"outputs": [{"name": "b"}]}, "m", "3", outputs)
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"model_name": "m", "model_version": "3", "outputs": [{"name": "b", ' \
                   b'"datatype": "FP64", "shape": [1], "data": [1.0]}]}'


SIGNATURE = Signature.from_dict({"inputs": [
    {"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]},
    {"name": "scale", "datatype": "FP32", "shape": [1]}]}, "test")


@pytest.mark.parametrize("tensors, datatypes, says", [
    ({"image": np.zeros((2, 28, 28), np.uint8)}, {"image": "UINT8"}, "input 'scale' missing"),
    ({"image": np.zeros((2, 28, 28), np.uint8), "scale": np.ones(1, np.float32),
      "extra": np.ones(1)}, {"image": "UINT8", "scale": "FP32", "extra": "FP64"},
     "no input named 'extra'"),
    ({"image": np.zeros((2, 28, 27), np.uint8), "scale": np.ones(1, np.float32)},
     {"image": "UINT8", "scale": "FP32"}, "has shape [2, 28, 27]; the model takes [-1, 28, 28]"),
    ({"image": np.zeros((2, 28, 28), np.int8), "scale": np.ones(1, np.float32)},
     {"image": "INT8", "scale": "FP32"}, "input 'image' is INT8; the model takes UINT8"),
])
def test_declared_inputs_are_checked(tensors, datatypes, says):
    with pytest.raises(ProtocolError) as caught:
        check_inputs(tensors, datatypes, SIGNATURE)
    assert says in caught.value.message


def test_inputs_that_fit_the_declaration_pass_and_undeclared_models_take_anything():
    fits = {"image": np.zeros((5, 28, 28), np.uint8), "scale": np.ones(1, np.float32)}
    check_inputs(fits, {"image": "UINT8", "scale": "FP32"}, SIGNATURE)
    check_inputs({"anything": np.ones(3)}, {"anything": "FP64"}, None)
