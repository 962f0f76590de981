"""The AWS event-stream framing of ``InvokeEndpointWithResponseStream`` answers.

boto3's ``invoke_endpoint_with_response_stream`` reads its answer as a series of
binary messages (``application/vnd.amazon.eventstream``), each:

    total length (4) | headers length (4) | CRC32 of those 8 bytes (4)
    headers: name length (1), name, type (1; 7 = string), value length (2), value
    payload
    CRC32 of everything before (4)

all big-endian. A chunk of the answer is a ``PayloadPart`` event whose payload is the
chunk's bytes; an error after the answer began is a ``ModelStreamError`` exception
message (JSON payload ``{"Message", "ErrorCode"}``), which boto3 raises as
``EventStreamError``.
"""

from __future__ import annotations

import binascii
import json
import struct

__all__ = ["CONTENT_TYPE", "encode_message", "model_stream_error",
           "payload_part"]

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7
_PRELUDE = struct.Struct(">II")


def _header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode("utf-8"), value.encode("utf-8")
    return (struct.pack(">B", len(name_bytes)) + name_bytes
            + struct.pack(">BH", _STRING, len(value_bytes)) + value_bytes)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    head = b"".join(_header(name, value) for name, value in headers.items())
    prelude = _PRELUDE.pack(12 + len(head) + len(payload) + 4, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", binascii.crc32(message))


def payload_part(chunk: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``chunk``."""
    return encode_message({":event-type": "PayloadPart",
                           ":content-type": "application/octet-stream",
                           ":message-type": "event"}, chunk)


def model_stream_error(message: str, code: str) -> bytes:
    """A ``ModelStreamError``: the answer broke off after it began.

    :param code: SageMaker's error codes are ``ModelInvocationTimeExceeded`` and
        ``StreamBroken``; we also send ``ModelError`` for an exception in the model.
    """
    body = json.dumps({"Message": message, "ErrorCode": code}).encode("utf-8")
    return encode_message({":exception-type": "ModelStreamError",
                           ":content-type": "application/json",
                           ":message-type": "exception"}, body)
