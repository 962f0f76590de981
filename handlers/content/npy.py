"""``application/x-npy``: one NumPy array in NPY format, never unpickled."""

from __future__ import annotations

import io
import typing as t

import numpy as np

from handlers.content.base import ContentHandler, DecodeError, EncodeError

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class NPYHandler(ContentHandler):
    media_type = "application/x-npy"

    def decode(self, body: bytes) -> np.ndarray:
        stream = io.BytesIO(body)
        try:
            version = np.lib.format.read_magic(stream)
            reader = _HEADER_READERS.get(version)
            if reader is None:
                raise DecodeError(f"body is not a valid NPY array: unknown format version {version}")
            shape, fortran_order, dtype = reader(stream)
        except DecodeError:
            raise
        except Exception as exc:  # numpy raises ValueError, EOFError, SyntaxError... here
            raise DecodeError(f"body is not a valid NPY array: {exc}") from None
        if dtype.hasobject:
            raise DecodeError(
                "NPY body holds Python objects (a pickled object array); "
                "pickles are refused: send a numeric or string array"
            )
        count = 1
        for dim in shape:
            count *= dim
        offset = stream.tell()
        # Check the declared size against what was sent before allocating anything.
        if count * dtype.itemsize != len(body) - offset:
            raise DecodeError(
                f"NPY header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes) "
                f"but the body holds {len(body) - offset} bytes of data"
            )
        try:
            # Zero-copy: the array is a view of the request body.
            flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        except ValueError as exc:
            raise DecodeError(f"body is not a valid NPY array: {exc}") from None
        return flat.reshape(shape, order="F" if fortran_order else "C")

    def encode(self, obj: t.Any) -> bytes:
        try:
            array = np.asarray(obj)
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise EncodeError(f"cannot write the prediction as NPY: {exc}") from None
        if array.dtype.hasobject:
            raise EncodeError(
                "cannot write the prediction as NPY without pickling: "
                "it is an object array (mixed or ragged values)"
            )
        stream = io.BytesIO()
        np.save(stream, array, allow_pickle=False)
        return stream.getvalue()
