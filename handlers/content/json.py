"""``application/json``: any JSON value; numeric arrays come in and go out as NumPy."""

from __future__ import annotations

import json
import typing as t
import warnings

import numpy as np

from handlers.content.base import ContentHandler, DecodeError, EncodeError


def _to_builtin(obj: t.Any) -> t.Any:
    """``json.dumps``'s ``default``: what the standard library cannot write."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__"):  # tensors and other array-likes, without importing them
        return np.asarray(obj).tolist()
    raise TypeError(f"a {type(obj).__name__} is not JSON serializable")


class JSONHandler(ContentHandler):
    media_type = "application/json"

    def decode(self, body: bytes) -> t.Any:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"JSON body is not valid UTF-8: {exc}") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DecodeError(f"body is not valid JSON: {exc}") from None
        if isinstance(value, list):
            # Numeric (nested) lists are what models eat: hand them over as arrays.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ragged lists warn on older NumPy
                try:
                    array = np.asarray(value)
                except (ValueError, TypeError):
                    return value
            if array.dtype.kind in "biuf":
                return array
        return value

    def encode(self, obj: t.Any) -> bytes:
        if isinstance(obj, np.ndarray):
            obj = obj.tolist()
        try:
            return json.dumps(obj, default=_to_builtin, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot write the prediction as JSON: {exc}") from None
