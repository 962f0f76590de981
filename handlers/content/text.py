"""``text/plain`` (a str) and ``application/octet-stream`` (bytes, passed through)."""

from __future__ import annotations

import numbers
import typing as t

import numpy as np

from handlers.content.base import ContentHandler, DecodeError, EncodeError


class TextHandler(ContentHandler):
    media_type = "text/plain"

    def decode(self, body: bytes) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"text body is not valid UTF-8: {exc}") from None

    def encode(self, obj: t.Any) -> bytes:
        if isinstance(obj, (np.generic, numbers.Number)):
            obj = str(obj)
        if isinstance(obj, str):
            return obj.encode("utf-8")
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        raise EncodeError(f"text/plain holds a str; the prediction is a {type(obj).__name__}")


class OctetStreamHandler(ContentHandler):
    media_type = "application/octet-stream"

    def decode(self, body: bytes) -> bytes:
        return body

    def encode(self, obj: t.Any) -> bytes:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        raise EncodeError(
            f"application/octet-stream holds bytes; the prediction is a {type(obj).__name__}"
        )
