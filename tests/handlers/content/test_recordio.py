import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from handlers.content import DecodeError, EncodeError, recordio
from handlers.content.recordio import Record, RecordIOHandler, read_recordio, write_recordio

handler = RecordIOHandler()

# The byte examples of shared/specs/recordio-protobuf.md, verified with the SDK.
FLOAT32_EXAMPLE = bytes.fromhex(
    "0a23d7ce18000000" "0a160a0676616c756573120c120a0a080000c03f00000040")
INT_EXAMPLE = bytes.fromhex("0a23d7ce13000000" "0a110a0676616c75657312073a050a03010203" "00")


def frame(payload: bytes, cflag: int = 0) -> bytes:
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | len(payload)) + payload + \
        b"\0" * (-len(payload) % 4)


def dense_request(array: np.ndarray) -> bytes:
    """What the SDK's write_numpy_to_dense_tensor writes (features["values"])."""
    kind = {np.dtype(np.float32): "float32_tensor", np.dtype(np.float64): "float64_tensor"}.get(
        array.dtype, "int32_tensor")
    payloads = []
    for row in array:
        record = Record()
        getattr(record.features["values"], kind).values.extend(row.tolist())
        payloads.append(record.SerializeToString())
    return write_recordio(payloads)


def test_spec_byte_examples():
    decoded = handler.decode(FLOAT32_EXAMPLE)
    assert decoded.dtype == np.float32 and decoded.tolist() == [[1.5, 2.0]]
    decoded = handler.decode(INT_EXAMPLE)
    assert decoded.dtype == np.int32 and decoded.tolist() == [[1, 2, 3]]
    assert dense_request(np.array([[1.5, 2.0]], np.float32)) == FLOAT32_EXAMPLE
    assert dense_request(np.array([[1, 2, 3]])) == INT_EXAMPLE


rows = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.int32]),
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements={"allow_nan": False},
)


@given(rows)
def test_dense_requests_decode_to_the_array_dtype_kept(array):
    decoded = handler.decode(dense_request(array))
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


@given(rows)
def test_encoded_arrays_are_one_label_record_per_row(array):
    body = handler.encode(array)
    records = [Record.FromString(p) for p in read_recordio(body)]
    assert len(records) == len(array)
    kind = {np.float32: "float32_tensor", np.float64: "float64_tensor"}.get(
        array.dtype.type, "int32_tensor")
    for record, row in zip(records, array):
        assert list(record.features) == [] and list(record.label) == ["values"]
        assert np.array_equal(np.array(getattr(record.label["values"], kind).values), row)
    # Framing: cflag 0, 4-byte aligned.
    assert len(body) % 4 == 0 and struct.unpack_from("<I", body, 4)[0] >> 29 == 0


@pytest.mark.parametrize("array", [
    np.random.default_rng(0).normal(size=(500, 7)).astype(np.float32),
    np.random.default_rng(1).normal(size=(3, 200)),
    np.arange(3000).reshape(1000, 3) % 100,  # one-byte varints
    np.array([[1, 2, 3], [1000, 2, -5], [0, 0, 2**31 - 1]]),  # mixed varint sizes, negatives
], ids=["float32", "float64", "int32", "int32-mixed"])
def test_bulk_path_matches_the_record_by_record_path(array):
    body = dense_request(array)
    bulk = recordio._decode_dense_in_bulk(body)
    one_by_one = recordio._decode_records(read_recordio(body))
    assert bulk is not None and bulk.dtype == one_by_one.dtype
    assert np.array_equal(bulk, array) and np.array_equal(one_by_one, array)


def test_bodies_off_the_canonical_layout_take_the_careful_path():
    ragged = dense_request_ragged()
    assert recordio._decode_dense_in_bulk(ragged) is None
    assert isinstance(handler.decode(ragged), list)
    labelled = Record()
    labelled.features["values"].float32_tensor.values.extend([1.0])
    labelled.label["values"].float32_tensor.values.extend([0.0])
    body = write_recordio([labelled.SerializeToString()] * 2)
    assert recordio._decode_dense_in_bulk(body) is None
    assert handler.decode(body) == [labelled, labelled]
    # A float payload that holds the magic number (SDK writers do not split it).
    magic = float(np.frombuffer(struct.pack("<I", 0xCED7230A), "<f4")[0])
    array = np.array([[magic, magic, magic, 1.0]] * 4, np.float32)
    assert np.array_equal(handler.decode(dense_request(array)), array)


def test_unpacked_repeated_values_and_reordered_map_entries():
    # values as unpacked floats (tag 0x0d each), map entry with value before key.
    tensor = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.0, 2.0))
    value = b"\x12" + bytes([len(tensor)]) + tensor
    entry = b"\x12" + bytes([len(value)]) + value + b"\x0a\x06values"
    payload = b"\x0a" + bytes([len(entry)]) + entry
    assert handler.decode(frame(payload) * 2).tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_duplicate_map_keys_last_one_wins():
    first, last = Record(), Record()
    first.features["values"].float32_tensor.values.extend([9.0])
    last.features["values"].float32_tensor.values.extend([1.0, 2.0])
    payload = first.SerializeToString() + last.SerializeToString()  # merged: repeated entries
    assert handler.decode(frame(payload)).tolist() == [[1.0, 2.0]]


def test_other_records_decode_to_records_that_keep_everything():
    record = Record()
    record.features["source"].int32_tensor.values.extend([4, 5, 6])
    record.features["target"].int32_tensor.values.extend([])
    record.label["values"].float32_tensor.values.append(1.0)
    record.uid = "sentence-1"
    record.configuration = '{"attention_matrix": "true"}'
    sparse = Record()
    sparse.features["values"].float64_tensor.values.extend([3.0])
    sparse.features["values"].float64_tensor.keys.extend([7])
    sparse.features["values"].float64_tensor.shape.extend([10])
    decoded = handler.decode(write_recordio([record.SerializeToString(),
                                             sparse.SerializeToString()]))
    assert isinstance(decoded, list) and decoded == [record, sparse]
    assert decoded[0].configuration == '{"attention_matrix": "true"}'


def test_ragged_dense_rows_decode_to_records():
    decoded = handler.decode(dense_request_ragged())
    assert isinstance(decoded, list) and len(decoded) == 2


def dense_request_ragged():
    payloads = []
    for row in ([1.0, 2.0], [3.0]):
        record = Record()
        record.features["values"].float32_tensor.values.extend(row)
        payloads.append(record.SerializeToString())
    return write_recordio(payloads)


def test_continuation_flags_are_joined_with_the_magic_between():
    record = Record()
    # A value whose bytes hold the magic number at a 4-aligned offset, as dmlc splits.
    record.features["values"].bytes.value.append(b"\x00" * 2 + struct.pack("<I", 0xCED7230A) + b"x")
    payload = record.SerializeToString()
    at = payload.index(struct.pack("<I", 0xCED7230A))
    body = frame(payload[:at], 1) + frame(payload[at + 4:], 3)
    assert read_recordio(body) == [payload]
    middle = frame(b"ab", 1) + frame(b"cd", 2) + frame(b"ef", 3)
    assert read_recordio(middle) == [b"ab\x0a\x23\xd7\xcecd\x0a\x23\xd7\xceef"]


@pytest.mark.parametrize("body, says", [
    (b"", "empty"),
    (b"\x00\x00\x00\x00" + FLOAT32_EXAMPLE[4:], "bad RecordIO magic 0x00000000 at byte 0"),
    (FLOAT32_EXAMPLE[:5], "truncated RecordIO header"),
    (FLOAT32_EXAMPLE[:20], "declares 24 bytes but only 12 remain"),
    (INT_EXAMPLE[:-1], "missing its padding"),
    (FLOAT32_EXAMPLE + b"\x0a\x23", "truncated RecordIO header at byte 32"),
    (frame(b"ab", 2), "continues nothing"),
    (frame(b"ab", 1), "ends inside a continued record"),
    (frame(b"ab", 1) + frame(b"cd", 0), "interrupts a continued record"),
    (frame(b"ab", 5), "unknown continuation flag 5"),
    (frame(b"\xff\xff\xff"), "record 0 is not a valid Record"),
    (frame(b"\x0a\x05\x12\x03\x52\x01\x00"), "no known tensor type"),  # a Value field 10
])
def test_bad_streams_are_decode_errors(body, says):
    with pytest.raises(DecodeError, match=says):
        handler.decode(body)


def test_encode_dict_of_columns_like_the_builtin_algorithms():
    body = handler.encode({"score": np.array([0.1, 0.9], np.float32),
                           "predicted_label": np.array([0.0, 1.0], np.float32)})
    records = [Record.FromString(p) for p in read_recordio(body)]
    assert [r.label["score"].float32_tensor.values[0] for r in records] == pytest.approx([0.1, 0.9])
    assert [r.label["predicted_label"].float32_tensor.values[0] for r in records] == [0.0, 1.0]
    with pytest.raises(EncodeError, match="one length"):
        handler.encode({"a": np.zeros(2), "b": np.zeros(3)})


def test_encode_records_as_given():
    record = Record()
    record.features["target"].int32_tensor.values.extend([5, 6, 3])
    body = handler.encode([record, record])
    assert read_recordio(body) == [record.SerializeToString()] * 2


def test_encode_refuses_what_a_tensor_cannot_hold():
    with pytest.raises(EncodeError, match="int32 range"):
        handler.encode(np.array([[2**40]]))
    with pytest.raises(EncodeError, match="not <U1"):
        handler.encode(np.array([["a"]]))


def test_keys_that_are_not_utf8_are_decode_errors():
    # Found by the fuzz test: a flipped byte in the key "values".
    record = Record()
    record.features["values"].float32_tensor.values.append(1.0)
    payload = record.SerializeToString().replace(b"values", b"v\xe1lues")
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        handler.decode(frame(payload))


def test_empty_tensors_are_kept():
    # What the seq2seq client sends: features["target"] as an empty int32 tensor, which
    # some writers leave as an empty Value with no tensor field at all.
    record = Record()
    record.features["source"].int32_tensor.values.extend([4, 5, 6])
    record.features["target"].int32_tensor.values.extend([])
    bare = Record()
    bare.features["source"].int32_tensor.values.extend([4])
    bare.features["target"].Clear()  # the map entry, with an empty Value
    decoded = handler.decode(write_recordio([record.SerializeToString(),
                                             bare.SerializeToString()]))
    assert isinstance(decoded, list)
    assert sorted(decoded[0].features) == sorted(decoded[1].features) == ["source", "target"]
    assert decoded[1].features["target"].WhichOneof("value") is None
