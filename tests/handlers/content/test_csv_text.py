import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from handlers.content import DecodeError, EncodeError
from handlers.content.csv import CSVHandler
from handlers.content.text import OctetStreamHandler, TextHandler

csv = CSVHandler()


_shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6)


# CSV decodes to float64, so integers round-trip up to 2**53.
@given(st.sampled_from([np.float64, np.float32, np.int32]).flatmap(
           lambda dtype: hnp.arrays(dtype, _shapes, elements={"allow_nan": False,
                                                              "allow_infinity": False}))
       | hnp.arrays(np.int64, _shapes, elements=st.integers(-2**53, 2**53)))
def test_2d_arrays_round_trip_exactly(array):
    decoded = csv.decode(csv.encode(array))
    assert decoded.shape == array.shape and decoded.dtype == np.float64
    # %.17g / %.9g: every float64 / float32 comes back to the same value of its type.
    assert np.array_equal(decoded.astype(array.dtype), array)


def test_one_row_is_2d_and_1d_predictions_are_a_value_per_line():
    assert csv.decode(b"1,2,3").shape == (1, 3)
    assert csv.decode(b"1,2\r\n3,4\r\n").tolist() == [[1, 2], [3, 4]]
    assert csv.encode(np.array([0.5, 1.5])) == b"0.5\n1.5\n"
    assert csv.encode(np.array([1, 2])) == b"1\n2\n"


@pytest.mark.parametrize("body, says", [
    (b"1,2\n3", "rows of numbers of equal length"),
    (b"1,a\n", "rows of numbers"),
    (b"", "empty"),
    (b"\xff,1", "not valid UTF-8"),
])
def test_bad_csv_is_a_decode_error(body, says):
    with pytest.raises(DecodeError, match=says):
        csv.decode(body)


def test_csv_refuses_what_it_cannot_write():
    with pytest.raises(EncodeError, match="3-D"):
        csv.encode(np.zeros((2, 2, 2)))
    with pytest.raises(EncodeError, match="holds numbers"):
        csv.encode(np.array(["a"]))


@given(st.text())
def test_text_round_trips(text):
    handler = TextHandler()
    assert handler.decode(handler.encode(text)) == text


def test_text_and_octet_stream():
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        TextHandler().decode(b"\xff")
    assert TextHandler().encode(np.float32(0.5)) == b"0.5"
    with pytest.raises(EncodeError):
        TextHandler().encode([1])
    assert OctetStreamHandler().decode(b"\x00\xff") == b"\x00\xff"
    assert OctetStreamHandler().encode(bytearray(b"ab")) == b"ab"
    with pytest.raises(EncodeError):
        OctetStreamHandler().encode("text")
