"""``text/csv``: rows of numbers in, a 2-D float array out; 1-D and 2-D arrays written back
as AWS's containers write them."""

from __future__ import annotations

import io
import typing as t

import numpy as np

from handlers.content.base import ContentHandler, DecodeError, EncodeError, to_numpy


class CSVHandler(ContentHandler):
    media_type = "text/csv"

    def decode(self, body: bytes) -> np.ndarray:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"CSV body is not valid UTF-8: {exc}") from None
        if not text.strip():
            raise DecodeError("CSV body is empty")
        if len(body) * 8 > self.max_decoded_bytes:  # else even all-commas fits
            cells = body.count(b",") + body.count(b"\n") + 1
            self.check_decoded(cells * 8, f"CSV of {cells} cells")
        try:
            # loadtxt is NumPy's C parser; it refuses ragged rows and non-numbers.
            return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2,
                              comments=None)
        except ValueError as exc:
            raise DecodeError(f"CSV body is not rows of numbers of equal length: {exc}") from None

    def encode(self, obj: t.Any) -> bytes:
        """2-D: a line per row; 1-D: a value per line (one prediction per input row)."""
        try:
            array = np.asarray(to_numpy(obj))
        except (ValueError, TypeError) as exc:
            raise EncodeError(f"cannot write the prediction as CSV: {exc}") from None
        if array.ndim == 0:
            array = array.reshape(1, 1)
        elif array.ndim == 1:
            array = array.reshape(-1, 1)
        elif array.ndim > 2:
            raise EncodeError(f"cannot write a {array.ndim}-D array as CSV rows; reshape it to 2-D")
        if array.dtype.kind not in "biuf":
            raise EncodeError(f"CSV holds numbers; the prediction is {array.dtype}")
        stream = io.StringIO()
        # What AWS's encoder writes (sagemaker-inference's np.savetxt(fmt="%s")): each
        # NumPy scalar's str, the shortest form of its own type (a float32 as 4.999992, a
        # float64 as 0.1, an int as 3, a bool as True), so that the text the SDK's
        # CSVDeserializer hands back (strings) is the migrated container's.
        np.savetxt(stream, array, delimiter=",", fmt="%s")
        return stream.getvalue().encode("utf-8")
