"""The AWS event-stream framing, read back with botocore's own parser (boto3 reads it over
HTTP in tests/integration/test_streaming.py)."""

from __future__ import annotations

import binascii
import json
import struct

import pytest
from botocore.eventstream import ChecksumMismatch

from serving.protocols import eventstream
from tests.eventstream_reader import read_messages


def test_payload_parts_and_errors_round_trip():
    data = (eventstream.payload_part(b"hello ") + eventstream.payload_part(b"")
            + eventstream.model_stream_error("it broke", "ModelError"))
    messages = read_messages(data)
    assert [payload for _, payload in messages[:2]] == [b"hello ", b""]
    assert messages[0][0] == {":event-type": "PayloadPart",
                              ":content-type": "application/octet-stream",
                              ":message-type": "event"}
    headers, payload = messages[2]
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "ModelStreamError"
    assert json.loads(payload) == {"Message": "it broke", "ErrorCode": "ModelError"}


def test_lengths_and_crcs_are_the_wire_formats():
    message = eventstream.encode_message({"a": "b"}, b"xyz")
    total, head_length, prelude_crc = struct.unpack_from(">III", message)
    assert total == len(message) == 12 + (1 + 1 + 1 + 2 + 1) + 3 + 4
    assert head_length == 6
    assert prelude_crc == binascii.crc32(message[:8])
    assert struct.unpack(">I", message[-4:])[0] == binascii.crc32(message[:-4])


def test_corruption_is_caught():
    message = bytearray(eventstream.payload_part(b"hello"))
    message[-6] ^= 1  # a payload byte
    with pytest.raises(ChecksumMismatch):
        read_messages(bytes(message))
    with pytest.raises(AssertionError, match="after the last whole message"):
        read_messages(eventstream.payload_part(b"hello")[:-1])  # cut short
