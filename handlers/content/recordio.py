"""``application/x-recordio-protobuf``: SageMaker's Record messages in dmlc RecordIO framing.

The wire contract is ``shared/specs/recordio-protobuf.md``. Decoding:

- dense records holding only ``features["values"]`` (what ``RecordSerializer``
  writes) give one 2-D array, dtype kept (float32, float64, int32);
- anything else (other keys, labels, sparse tensors, bytes, uid, metadata,
  configuration, rows of different lengths) gives a list of :data:`Record`
  messages that keep everything.

The common case, dense records as ``RecordSerializer`` writes them, is decoded
in bulk: NumPy finds the frames, checks every record's layout and cuts out and
converts the values of all records at once. Other bodies are parsed record by
record with protobuf.

Encoding: a 2-D array gives one record per row under ``label["values"]``
(a 1-D array one record per element); a dict of equal-length arrays gives one
record per row under ``label[name]``, as the built-in algorithms answer; a
list of :data:`Record` messages is written as given. Writers always use
continuation flag 0, since the SDK's reader knows no other.
"""

from __future__ import annotations

import struct
import typing as t

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from handlers.content.base import ContentHandler, DecodeError, EncodeError, to_numpy

__all__ = ["Record", "RecordIOHandler", "read_recordio", "write_recordio"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<II")


# -- the Record schema (proto2, package aialgs.data), built from its descriptor -----------
# Built at import in a pool of our own: no protoc step, no generated file tied to one
# protobuf release, and no clash with the SDK's record_pb2 in the same process.


def _build_schema() -> descriptor_pb2.FileDescriptorProto:
    F = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(
        name="serving_toolkit/aialgs_record.proto", package="aialgs.data", syntax="proto2"
    )

    def tensor(name: str, value_type: int) -> None:
        message = schema.message_type.add(name=name)
        for field_name, number, field_type in (
            ("values", 1, value_type), ("keys", 2, F.TYPE_UINT64), ("shape", 3, F.TYPE_UINT64),
        ):
            field = message.field.add(name=field_name, number=number, type=field_type,
                                      label=F.LABEL_REPEATED)
            field.options.packed = True

    tensor("Float32Tensor", F.TYPE_FLOAT)
    tensor("Float64Tensor", F.TYPE_DOUBLE)
    tensor("Int32Tensor", F.TYPE_INT32)

    raw = schema.message_type.add(name="Bytes")
    raw.field.add(name="value", number=1, type=F.TYPE_BYTES, label=F.LABEL_REPEATED)
    raw.field.add(name="content_type", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)

    value = schema.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for field_name, number, type_name in (
        ("float32_tensor", 2, "Float32Tensor"), ("float64_tensor", 3, "Float64Tensor"),
        ("int32_tensor", 7, "Int32Tensor"), ("bytes", 9, "Bytes"),
    ):
        value.field.add(name=field_name, number=number, type=F.TYPE_MESSAGE,
                        type_name=f".aialgs.data.{type_name}", label=F.LABEL_OPTIONAL,
                        oneof_index=0)

    record = schema.message_type.add(name="Record")
    for field_name, number, entry in (("features", 1, "FeaturesEntry"), ("label", 2, "LabelEntry")):
        map_entry = record.nested_type.add(name=entry)
        map_entry.options.map_entry = True
        map_entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        map_entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE,
                            type_name=".aialgs.data.Value", label=F.LABEL_OPTIONAL)
        record.field.add(name=field_name, number=number, type=F.TYPE_MESSAGE,
                         type_name=f".aialgs.data.Record.{entry}", label=F.LABEL_REPEATED)
    for field_name, number in (("uid", 3), ("metadata", 4), ("configuration", 5)):
        record.field.add(name=field_name, number=number, type=F.TYPE_STRING,
                         label=F.LABEL_OPTIONAL)
    return schema


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_build_schema())
#: The ``aialgs.data.Record`` message class.
Record: type[Message] = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("aialgs.data.Record")
)

#: Tensor field of ``Value`` per NumPy dtype, and back.
_TENSOR_DTYPES = {
    "float32_tensor": np.dtype("<f4"),
    "float64_tensor": np.dtype("<f8"),
    "int32_tensor": np.dtype("<i4"),
}


# -- framing ------------------------------------------------------------------------


def _padded(length: int) -> int:
    return (length + 3) & ~3


def read_recordio(body: bytes) -> list[bytes]:
    """Split a RecordIO body into its payloads, joining continued records.

    Raises :class:`DecodeError` on a wrong magic number, a truncated header or
    payload, or continuation flags out of order.
    """
    payloads: list[bytes] = []
    parts: list[bytes] | None = None  # the pieces of a record split by a dmlc writer
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 8:
            raise DecodeError(f"truncated RecordIO header at byte {offset}: {end - offset} bytes")
        magic, lrec = _HEADER.unpack_from(body, offset)
        if magic != MAGIC:
            raise DecodeError(
                f"bad RecordIO magic 0x{magic:08x} at byte {offset} (expected 0x{MAGIC:08x})"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = offset + 8
        if start + length > end:
            raise DecodeError(
                f"record at byte {offset} declares {length} bytes but only {end - start} remain"
            )
        payload = body[start:start + length]
        offset = start + _padded(length)
        if offset > end:
            raise DecodeError(f"record at byte {start - 8} is missing its padding (truncated)")
        if cflag == 0:
            if parts is not None:
                raise DecodeError(f"record at byte {start - 8} interrupts a continued record")
            payloads.append(payload)
        elif cflag == 1:
            if parts is not None:
                raise DecodeError(f"record at byte {start - 8} starts a record twice")
            parts = [payload]
        elif cflag in (2, 3):
            if parts is None:
                raise DecodeError(f"record at byte {start - 8} continues nothing (flag {cflag})")
            parts.append(payload)
            if cflag == 3:
                payloads.append(_MAGIC_BYTES.join(parts))
                parts = None
        else:
            raise DecodeError(f"record at byte {start - 8} has unknown continuation flag {cflag}")
    if parts is not None:
        raise DecodeError("body ends inside a continued record")
    return payloads


def write_recordio(payloads: t.Iterable[bytes]) -> bytes:
    """Frame payloads with continuation flag 0 and zero padding."""
    out = bytearray()
    for payload in payloads:
        if len(payload) > _LENGTH_MASK:
            raise EncodeError(f"a record of {len(payload)} bytes is over RecordIO's 2^29 limit")
        out += _HEADER.pack(MAGIC, len(payload))
        out += payload
        out += b"\0" * (_padded(len(payload)) - len(payload))
    return bytes(out)


# -- decoding -------------------------------------------------------------------------


def _plain_dense(record: Message) -> tuple[str, t.Any] | None:
    """``(tensor field, values)`` when the record is only a dense ``features["values"]``."""
    if len(record.features) != 1 or "values" not in record.features or len(record.label):
        return None
    if record.HasField("uid") or record.HasField("metadata") or record.HasField("configuration"):
        return None
    value = record.features["values"]
    kind = value.WhichOneof("value")
    if kind not in _TENSOR_DTYPES:
        return None
    tensor = getattr(value, kind)
    if len(tensor.keys) or len(tensor.shape):
        return None
    return kind, tensor.values


def _varints(data: np.ndarray) -> np.ndarray:
    """Decode concatenated protobuf varints (uint8 array) to int64, all at once."""
    ends = np.flatnonzero(data < 0x80)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    sizes = ends - starts + 1
    longest = int(sizes.max(initial=0))
    if longest > 10:
        raise ValueError("a varint longer than 10 bytes")
    values = (data[starts] & 0x7F).astype(np.uint64)
    for k in range(1, longest):  # one pass per byte position, over all varints at once
        byte = data[np.minimum(starts + k, len(data) - 1)] & 0x7F
        values |= np.where(sizes > k, byte.astype(np.uint64) << np.uint64(7 * k), np.uint64(0))
    return values.astype(np.int64)


def _varints_at(data: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One varint at each offset in ``at``: (values, sizes, valid), at once for all offsets."""
    values = np.zeros(len(at), dtype=np.int64)
    sizes = np.ones(len(at), dtype=np.int64)
    done = np.zeros(len(at), dtype=bool)
    last = len(data) - 1
    for k in range(5):  # 5 bytes hold any length up to 2**35; RecordIO stops at 2**29
        byte = data[np.minimum(at + k, last)]
        values += np.where(done, 0, (byte & 0x7F).astype(np.int64) << (7 * k))
        done |= byte < 0x80
        if done.all():  # lengths are short: this ends after a byte or two
            break
        sizes += ~done
    return values, sizes, done


def _frames_in_bulk(body: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(payload offsets, payload lengths) of a body of plain cflag-0 frames, found at once.

    Every 4-aligned magic number is a candidate frame start; when each frame's
    length leads exactly to the next candidate and the last to the end, the
    candidates are the frames. Anything else (continued records, a magic number
    inside a payload, damage) returns ``None`` for the careful reader.
    """
    if len(body) < 8 or len(body) % 4:
        return None
    words = np.frombuffer(body, dtype="<u4")
    starts = np.flatnonzero(words == MAGIC)
    if not len(starts) or starts[0] != 0 or starts[-1] + 1 >= len(words):
        return None
    lrec = words[starts + 1]
    if (lrec >> 29).any():
        return None
    lengths = (lrec & _LENGTH_MASK).astype(np.int64)
    following = starts + 2 + (lengths + 3) // 4
    if following[-1] != len(words) or not (following[:-1] == starts[1:]).all():
        return None
    return starts.astype(np.int64) * 4 + 8, lengths


#: Tag byte of each tensor field of ``Value`` (field number << 3 | length-delimited).
_TENSOR_TAGS = {0x12: "float32_tensor", 0x1A: "float64_tensor", 0x3A: "int32_tensor"}
_VALUES_KEY = np.frombuffer(b"\x0a\x06values\x12", dtype=np.uint8)


def _decode_dense_in_bulk(body: bytes) -> np.ndarray | None:
    """The bulk path: dense ``features["values"]`` records, as ``RecordSerializer`` writes them.

    Each payload must be exactly ``features { key: "values" value { <tensor> { values:
    packed } } }`` in the canonical field order; the layout of every record is checked
    with NumPy at once, and the values of all records are cut out and converted at
    once. Bodies of any other shape return ``None`` and go to protobuf record by record.
    """
    frames = _frames_in_bulk(body)
    if frames is None:
        return None
    start, length = frames
    data = np.frombuffer(body, dtype=np.uint8)
    end = start + length
    last = len(data) - 1

    def take(at: np.ndarray) -> np.ndarray:
        return data[np.minimum(at, last)]

    def nested(at: np.ndarray, tag: int) -> tuple[np.ndarray, np.ndarray]:
        """Check a tag then a length that runs exactly to the end of the payload."""
        ok = (at < end) & (take(at) == tag)
        size, width, valid = _varints_at(data, at + 1)
        at = at + 1 + width
        return at, ok & valid & (at + size == end)

    at, ok = nested(start, 0x0A)  # Record.features: one map entry, the whole payload
    ok &= (take(at[:, None] + np.arange(len(_VALUES_KEY))) == _VALUES_KEY).all(axis=1)
    at = at + len(_VALUES_KEY) - 1  # key "values", then the entry's value field
    at, valid = nested(at, 0x12)
    ok &= valid
    tags = take(at)
    if not ok.all() or not (tags == tags[0]).all() or int(tags[0]) not in _TENSOR_TAGS:
        return None
    kind = _TENSOR_TAGS[int(tags[0])]
    at, valid = nested(at, int(tags[0]))  # the tensor message
    values_at, valid2 = nested(at, 0x0A)  # its packed values field, and nothing else
    if not (valid & valid2).all():
        return None

    sizes = end - values_at
    dtype = _TENSOR_DTYPES[kind]
    if kind != "int32_tensor" and (sizes == sizes[0]).all() and (
        (values_at - start == values_at[0] - start[0]).all()
    ):
        # Rows of one length: the frames are a matrix, the values a block of columns.
        stride = len(data) // len(start)
        block = data.reshape(len(start), stride)[:, values_at[0]:values_at[0] + sizes[0]]
        if sizes[0] % dtype.itemsize:
            return None
        return np.ascontiguousarray(block).view(dtype)
    # One gather of every record's value bytes: a mask that is on inside value regions.
    edges = np.zeros(len(data) + 1, dtype=np.int8)
    edges[values_at] = 1
    edges[end] -= 1
    raw = data[np.cumsum(edges[:-1], dtype=np.int8).view(bool)]
    if kind != "int32_tensor":
        if (sizes % dtype.itemsize).any():
            return None
        counts = sizes // dtype.itemsize
        values = raw.view(dtype)
    else:
        ends_varint = raw < 0x80
        row_ends = np.cumsum(sizes) - 1
        if not len(raw) or not ends_varint[row_ends].all():
            return None  # a varint runs past the end of its record
        try:
            values = _varints(raw).astype(np.int32)  # int32 wraps as protobuf does
        except ValueError:
            return None
        counts = np.add.reduceat(ends_varint, np.concatenate(([0], row_ends[:-1] + 1)))
    if not (counts == counts[0]).all():
        return None  # ragged rows: no 2-D array
    return values.reshape(len(counts), int(counts[0]))


def _check_record(number: int, record: Message) -> None:
    """Refuse what protobuf parses but a model cannot use: unknown tensors, bad UTF-8."""
    try:
        # proto2 strings are checked for UTF-8 only when read: read every one now.
        _ = (record.uid, record.metadata, record.configuration)
        for field in ("features", "label"):
            for key, value in getattr(record, field).items():
                kind = value.WhichOneof("value")
                # An empty Value is how an empty tensor looks on the wire (the seq2seq
                # client's features["target"]); one with unknown fields is refused.
                if kind is None and value.ByteSize():
                    raise DecodeError(
                        f"record {number}: {field}[{key!r}] holds no known tensor type "
                        f"(float32_tensor, float64_tensor, int32_tensor or bytes)"
                    )
                if kind == "bytes":
                    _ = value.bytes.content_type
    except UnicodeDecodeError as exc:
        raise DecodeError(f"record {number}: a string field is not valid UTF-8: {exc}") from None


def _decode_records(payloads: list[bytes]) -> np.ndarray | list[Message]:
    records = []
    for number, payload in enumerate(payloads):
        try:
            records.append(Record.FromString(payload))
        except ProtobufDecodeError as exc:
            raise DecodeError(f"record {number} is not a valid Record message: {exc}") from None
    for number, record in enumerate(records):
        _check_record(number, record)
    dense = [_plain_dense(record) for record in records]
    kinds = {d[0] for d in dense if d is not None}
    if None in dense or len(kinds) != 1:
        return records
    (kind,) = kinds
    if len({len(values) for _, values in dense}) != 1:
        return records  # ragged rows: no 2-D array, the records keep everything
    return np.array([list(values) for _, values in dense], dtype=_TENSOR_DTYPES[kind])


# -- encoding -------------------------------------------------------------------------


def _tensor_kind(array: np.ndarray) -> str:
    if array.dtype == np.float32:
        return "float32_tensor"
    if array.dtype == np.float64:
        return "float64_tensor"
    if array.dtype.kind in "biu":
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise EncodeError("integer values out of int32 range cannot go in an Int32Tensor")
        return "int32_tensor"
    if array.dtype == np.float16:
        return "float32_tensor"
    raise EncodeError(f"recordio-protobuf holds float32, float64 or int32 tensors, not {array.dtype}")


def _fill(value: Message, row: np.ndarray) -> None:
    kind = _tensor_kind(row)
    getattr(value, kind).values.extend(row.reshape(-1).tolist())


def _rows(array: np.ndarray) -> np.ndarray:
    if array.ndim == 0:
        return array.reshape(1, 1)
    if array.ndim == 1:
        return array.reshape(-1, 1)  # one prediction per input row
    return array.reshape(len(array), -1)


def _encode_array(array: np.ndarray) -> bytes:
    rows = _rows(array)
    kind = _tensor_kind(rows)
    if kind == "int32_tensor" or len(rows) == 0:
        payloads = []
        for row in rows:
            record = Record()
            getattr(record.label["values"], kind).values.extend(row.tolist())
            payloads.append(record.SerializeToString())
        return write_recordio(payloads)
    # Fixed-width values: every record is the first one's bytes with other values.
    dtype = _TENSOR_DTYPES[kind]
    rows = np.ascontiguousarray(rows, dtype=dtype)
    template = Record()
    getattr(template.label["values"], kind).values.extend(rows[0].tolist())
    payload = template.SerializeToString()
    size = rows.shape[1] * dtype.itemsize
    head = np.frombuffer(_HEADER.pack(MAGIC, len(payload)) + payload[:len(payload) - size],
                         dtype=np.uint8)
    stride = 8 + _padded(len(payload))
    out = np.zeros((len(rows), stride), dtype=np.uint8)
    out[:, :len(head)] = head
    out[:, len(head):len(head) + size] = rows.view(np.uint8).reshape(len(rows), size)
    return out.tobytes()


def _encode_columns(columns: t.Mapping[str, t.Any]) -> bytes:
    arrays = {str(name): np.asarray(to_numpy(v)) for name, v in columns.items()}
    lengths = {len(_rows(a)) for a in arrays.values()}
    if len(lengths) > 1:
        raise EncodeError(f"a dict of predictions needs arrays of one length, not {sorted(lengths)}")
    payloads = []
    for i in range(lengths.pop() if lengths else 0):
        record = Record()
        for name, array in arrays.items():
            _fill(record.label[name], _rows(array)[i])
        payloads.append(record.SerializeToString())
    return write_recordio(payloads)


#: The memory estimate of decoded records: per wire byte, and per record.
RECORD_BYTES_PER_BYTE, RECORD_BYTES = 8, 256


class RecordIOHandler(ContentHandler):
    media_type = "application/x-recordio-protobuf"

    def decode(self, body: bytes) -> np.ndarray | list[Message]:
        if not body:
            raise DecodeError("recordio-protobuf body is empty: no records")
        bulk = _decode_dense_in_bulk(body)  # one array of the body's own size, at most
        if bulk is not None:
            return bulk
        payloads = read_recordio(body)
        # Parsed messages, and the Python lists of values the dense path builds, take up to
        # ~8 bytes per wire byte plus a few hundred per record.
        self.check_decoded(len(body) * RECORD_BYTES_PER_BYTE + len(payloads) * RECORD_BYTES,
                           f"{len(payloads)} records")
        return _decode_records(payloads)

    def encode(self, obj: t.Any) -> bytes:
        obj = to_numpy(obj)
        if isinstance(obj, Message):
            obj = [obj]
        if isinstance(obj, (list, tuple)) and obj and all(isinstance(r, Message) for r in obj):
            return write_recordio(r.SerializeToString() for r in obj)
        if isinstance(obj, t.Mapping):
            return _encode_columns(obj)
        try:
            array = np.asarray(obj)
        except (ValueError, TypeError) as exc:
            raise EncodeError(f"cannot write the prediction as records: {exc}") from None
        return _encode_array(array)
