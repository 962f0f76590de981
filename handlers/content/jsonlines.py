"""``application/jsonlines``: one JSON value per line (batch transform's ``SplitType=Line``)."""

from __future__ import annotations

import typing as t

import numpy as np

from handlers.content.base import ContentHandler, DecodeError, to_numpy
from handlers.content.json import as_arrays, check_elements, dumps, loads


class JSONLinesHandler(ContentHandler):
    media_type = "application/jsonlines"
    aliases = ("application/jsonl", "application/x-jsonlines")

    def decode(self, body: bytes) -> t.Any:
        """The list of values, one per non-blank line; numeric rows become one array."""
        check_elements(self, body)
        values = [
            loads(line, f"line {number}")
            for number, line in enumerate(body.split(b"\n"), start=1)
            if line.strip()
        ]
        if not values:
            raise DecodeError("body holds no JSON lines")
        return as_arrays(values)

    def encode(self, obj: t.Any) -> bytes:
        """An array or list gives a line per row or item; anything else one line."""
        obj = to_numpy(obj)
        if isinstance(obj, np.ndarray) and obj.ndim == 0:
            obj = obj.item()
        if isinstance(obj, (np.ndarray, list, tuple)):
            lines = [dumps(row) for row in obj]
            return b"\n".join(lines) + b"\n" if lines else b""
        return dumps(obj) + b"\n"
