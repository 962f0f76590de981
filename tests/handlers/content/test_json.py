import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from handlers.content import DecodeError, EncodeError
from handlers.content.json import JSONHandler, write_float32_as
from handlers.content.jsonlines import JSONLinesHandler

json_handler = JSONHandler()
lines_handler = JSONLinesHandler()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
numeric_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False},
)


@given(json_values)
def test_any_json_value_round_trips(value):
    decoded = json_handler.decode(json_handler.encode(value))
    if isinstance(decoded, np.ndarray):
        decoded = decoded.tolist()
    assert decoded == value


@given(numeric_arrays)
def test_numeric_arrays_round_trip_as_arrays(array):
    decoded = json_handler.decode(json_handler.encode(array))
    assert isinstance(decoded, np.ndarray) and decoded.shape == array.shape
    assert np.allclose(decoded, array.astype(np.float64), rtol=1e-6)


def test_encodes_numpy_scalars_nested_containers_and_odd_arrays():
    value = {"score": np.float32(0.5), "label": np.int64(3), "rows": [np.arange(3)],
             "transposed": np.arange(6).reshape(2, 3).T, "half": np.ones(2, np.float16),
             "names": np.array(["a", "b"])}
    assert json_handler.decode(json_handler.encode(value)) == {
        "score": 0.5, "label": 3, "rows": [[0, 1, 2]], "transposed": [[0, 3], [1, 4], [2, 5]],
        "half": [1.0, 1.0], "names": ["a", "b"]}


def test_encodes_framework_tensors_without_importing_the_framework():
    class FakeTensor:  # what the encoder sees of a torch.Tensor: duck typing only
        __module__ = "torch"

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return np.array([1.5, 2.5])

    assert json_handler.encode({"t": FakeTensor()}) == b'{"t":[1.5,2.5]}'
    assert json_handler.encode(FakeTensor()) == b"[1.5,2.5]"


def test_ragged_and_mixed_lists_stay_lists():
    assert json_handler.decode(b"[[1, 2], [3]]") == [[1, 2], [3]]
    assert json_handler.decode(b'["a", "b"]') == ["a", "b"]
    assert json_handler.decode(b'{"instances": [1]}') == {"instances": [1]}


@pytest.mark.parametrize("body, says", [
    (b"", "not valid JSON"), (b"[1, 2", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
    (b"NaN", "not valid JSON"), (b'{"a": 1} x', "not valid JSON"),
])
def test_bad_json_is_a_decode_error(body, says):
    with pytest.raises(DecodeError, match=says):
        json_handler.decode(body)


def test_unencodable_object_is_an_encode_error():
    with pytest.raises(EncodeError, match="not JSON serializable"):
        json_handler.encode({"x": object()})


@given(st.lists(json_values, min_size=1, max_size=10))
def test_json_lines_round_trip(values):
    decoded = lines_handler.decode(lines_handler.encode(values))
    if isinstance(decoded, np.ndarray):
        decoded = decoded.tolist()
    assert decoded == values


def test_json_lines_rows_become_one_array_and_arrays_give_a_line_per_row():
    decoded = lines_handler.decode(b"[1, 2]\n\n[3, 4]\n")
    assert isinstance(decoded, np.ndarray) and decoded.tolist() == [[1, 2], [3, 4]]
    assert lines_handler.encode(np.array([[1, 2], [3, 4]])) == b"[1,2]\n[3,4]\n"
    assert lines_handler.encode({"a": 1}) == b'{"a":1}\n'


def test_json_lines_errors_name_the_line():
    with pytest.raises(DecodeError, match="line 2 is not valid JSON"):
        lines_handler.decode(b'{"a": 1}\n{"b": \n')
    with pytest.raises(DecodeError, match="no JSON lines"):
        lines_handler.decode(b"\n \n")


# -- how float32 numbers are written (SERVING_JSON_FLOAT32) ---------------------------

low_precision_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float16, np.dtype(">f4")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False},
)


@pytest.fixture
def shortest():
    write_float32_as("shortest")
    yield
    write_float32_as("float64")


@given(low_precision_arrays)
def test_float32_and_float16_parse_to_their_value_widened(array):
    # What AWS's json.dumps(array.tolist()) gives a client that parses doubles.
    expected = array.astype(np.float64).tolist()
    assert json.loads(json_handler.encode(array)) == expected
    assert json.loads(json_handler.encode({"nested": [array]})) == {"nested": [expected]}
    scalars = [np.float32(v) for v in array.ravel()]
    assert json.loads(json_handler.encode(scalars)) == [float(v) for v in scalars]


@given(hnp.arrays(dtype=np.float32, shape=hnp.array_shapes(min_dims=1, max_dims=2),
                  elements={"allow_nan": False, "allow_infinity": False}))
def test_the_shortest_form_reads_back_as_the_same_float32(array):
    write_float32_as("shortest")
    try:
        body = json_handler.encode({"a": array, "s": [array.ravel()[0]]})
    finally:
        write_float32_as("float64")
    parsed = json.loads(body)
    assert np.array_equal(np.asarray(parsed["a"], dtype=np.float32), array)
    assert np.float32(parsed["s"][0]) == array.ravel()[0]


def test_the_two_forms_of_awss_mxnet_answer(shortest):
    answer = np.array([[4.9999918937683105]], dtype=np.float32)
    assert json_handler.encode(answer) == b"[[4.999992]]"
    write_float32_as("float64")
    assert json_handler.encode(answer) == b"[[4.9999918937683105]]"
    assert lines_handler.encode(answer) == b"[4.9999918937683105]\n"


def test_odd_arrays_and_scalars_are_written_too():
    x = np.float32(0.1)
    assert json_handler.encode(np.array(x)) == b"0.10000000149011612"  # 0-d: the scalar
    assert json_handler.encode({"a": np.array(3)}) == b'{"a":3}'
    assert json_handler.encode(np.array([x, x], dtype=">f4")) == \
        b"[0.10000000149011612,0.10000000149011612]"  # big-endian
    assert json_handler.encode(np.array([[1, 2], [3, 4]], dtype=np.float32).T) == \
        b"[[1.0,3.0],[2.0,4.0]]"  # not contiguous
    assert json_handler.encode(np.array([x], dtype=object)) == b"[0.10000000149011612]"
    assert json_handler.encode(np.array([1.5], dtype=np.longdouble)) == b"[1.5]"
    assert json_handler.encode([np.int64(3), np.bool_(True), np.float64(0.1)]) == \
        b"[3,true,0.1]"


def test_nan_and_infinities_are_null_in_both_forms(shortest):
    values = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    assert json_handler.encode(values) == b"[null,null,null]"
    write_float32_as("float64")
    assert json_handler.encode(values) == b"[null,null,null]"
    assert json_handler.encode([np.float32("nan"), float("inf")]) == b"[null,null]"


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="not one of float64, shortest"):
        write_float32_as("double")
