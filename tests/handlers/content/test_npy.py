import io
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from handlers.content import DecodedTooLarge, DecodeError, EncodeError
from handlers.content.npy import NPYHandler, NPZHandler

npy, npz = NPYHandler(), NPZHandler()

any_dtype = (hnp.scalar_dtypes() | hnp.unicode_string_dtypes() | hnp.byte_string_dtypes()
             | hnp.nested_dtypes(max_itemsize=32))
arrays = hnp.arrays(any_dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))


def np_save(array, **kw):
    buf = io.BytesIO()
    np.save(buf, array, **kw)
    return buf.getvalue()


@given(arrays)
def test_np_save_bodies_decode_to_the_same_array(array):
    decoded = npy.decode(np_save(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()


@given(arrays)
def test_encoded_arrays_load_with_np_load(array):
    loaded = np.load(io.BytesIO(npy.encode(array)), allow_pickle=False)
    assert loaded.dtype == array.dtype and loaded.tobytes() == array.tobytes()


def test_decoding_is_zero_copy_and_keeps_fortran_order():
    body = np_save(np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    decoded = npy.decode(body)
    assert decoded.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert np.shares_memory(decoded, np.frombuffer(body, np.uint8))


def test_string_arrays_of_sentences():
    sentences = np.array(["a great film", "dull, and far too long ünïcode"])
    assert npy.decode(np_save(sentences)).tolist() == sentences.tolist()


@pytest.mark.parametrize("body, says", [
    (np_save(np.array([{"x": 1}], dtype=object)), "pickles are refused"),
    (np_save(np.arange(100))[:-1], "declares shape (100,)"),
    (np_save(np.arange(10)) + b"extra", "declares shape (10,)"),
    (b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f8', 'fortran_order': False, "
     b"'shape': (100000000000, 100000000000), }" + b" " * 49 + b"\n", "declares shape"),
    (b"\x93NUMPY\x09\x00", "unknown format version"),
    (b"not npy at all", "not a valid NPY"),
    (b"", "not a valid NPY"),
])
def test_bad_npy_is_a_decode_error(body, says):
    with pytest.raises(DecodeError, match=r"(?s).*" + says.replace("(", r"\(").replace(")", r"\)")):
        npy.decode(body)


def test_object_predictions_are_refused_not_pickled():
    with pytest.raises(EncodeError, match="without pickling"):
        npy.encode(np.array([1, "a", None], dtype=object))
    with pytest.raises(EncodeError):
        npy.encode([[1, 2], [3]])


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), arrays, max_size=4))
def test_npz_round_trips_with_np_load(named):
    decoded = npz.decode(npz.encode(named))
    assert decoded.keys() == named.keys()
    for name, array in named.items():
        assert decoded[name].dtype == array.dtype and decoded[name].tobytes() == array.tobytes()
    with np.load(io.BytesIO(npz.encode(named)), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(named)


def test_npz_from_savez_compressed_and_a_single_array():
    buf = io.BytesIO()
    np.savez_compressed(buf, data=np.arange(5), indptr=np.array([0, 5]), format=np.array("csr"))
    decoded = npz.decode(buf.getvalue())
    assert decoded["data"].tolist() == [0, 1, 2, 3, 4] and str(decoded["format"]) == "csr"
    assert npz.decode(npz.encode(np.ones(3)))["arr_0"].tolist() == [1, 1, 1]


def test_npz_refuses_bombs_pickles_and_garbage():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.npy", np_save(np.zeros(2_000_000)))
    small = NPZHandler()
    small.max_decoded_bytes = 1_000_000
    with pytest.raises(DecodedTooLarge, match="over the limit of 1000000 bytes decoded"):
        small.decode(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, bad=np.array([None], dtype=object))
    with pytest.raises(DecodeError, match="NPZ member bad.npy holds Python objects"):
        npz.decode(buf.getvalue())
    with pytest.raises(DecodeError, match="not a valid NPZ"):
        npz.decode(b"PK\x03\x04 truncated")


def test_zip_of_an_unknown_version_is_a_decode_error():
    # Found by the fuzz test: zipfile raises NotImplementedError for this one.
    body = bytearray(npz.encode(np.arange(12, dtype=np.float32).reshape(3, 4)))
    body[241] ^= 64
    with pytest.raises(DecodeError, match="not a valid NPZ archive: NotImplementedError"):
        npz.decode(bytes(body))
