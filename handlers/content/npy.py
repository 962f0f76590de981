"""``application/x-npy`` (one array) and ``application/x-npz`` (named arrays): never unpickled."""

from __future__ import annotations

import ast
import io
import typing as t
import warnings
import zipfile

import numpy as np

from handlers.content.base import (
    ContentHandler,
    DecodedTooLarge,
    DecodeError,
    EncodeError,
    to_numpy,
)

#: Longest NPY header accepted; NumPy's own safety limit.
MAX_HEADER_BYTES = 10_000


def _read_header(body: bytes | bytearray, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of NPY bytes, for format 1.0, 2.0, 3.0.

    Read by hand rather than with ``np.lib.format.read_array_header_*``: those
    have no 3.0 reader (NumPy writes 3.0 for UTF-8 field names) and the header
    can be refused here without building a stream.
    """
    if body[:6] != b"\x93NUMPY" or len(body) < 8:
        raise DecodeError(f"{what} is not a valid NPY array: no NPY magic string")
    major, minor = body[6], body[7]
    if (major, minor) == (1, 0):
        size, start = int.from_bytes(body[8:10], "little"), 10
    elif (major, minor) in ((2, 0), (3, 0)):
        size, start = int.from_bytes(body[8:12], "little"), 12
    else:
        raise DecodeError(f"{what} is not a valid NPY array: unknown format version {major}.{minor}")
    if len(body) < start or size > MAX_HEADER_BYTES or start + size > len(body):
        raise DecodeError(f"{what} is not a valid NPY array: header of {size} bytes is truncated "
                          f"or too long")
    try:
        text = bytes(body[start:start + size]).decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
        shape, fortran_order = header["shape"], header["fortran_order"]
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(fortran_order, bool)):
            raise ValueError(f"bad shape {shape!r} or fortran_order {fortran_order!r}")
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception as exc:  # literal_eval and descr_to_dtype raise many types
        raise DecodeError(f"{what} is not a valid NPY array: bad header: {exc}") from None
    return shape, fortran_order, dtype, start + size


def read_npy(body: bytes | bytearray, what: str = "body") -> np.ndarray:
    """Decode NPY bytes without pickles, checking the header before allocating.

    The array is a view of ``body`` when the layout allows (no copy); it is
    read-only when ``body`` is ``bytes``.
    """
    shape, fortran_order, dtype, offset = _read_header(body, what)
    if dtype.hasobject:
        raise DecodeError(
            f"{what} holds Python objects (a pickled object array); "
            "pickles are refused: send a numeric or string array"
        )
    count = 1
    for dim in shape:
        count *= dim
    # The declared size must be what was sent: checked before anything is allocated.
    if count * dtype.itemsize != len(body) - offset:
        raise DecodeError(
            f"{what}: NPY header declares shape {shape} of {dtype} ({count * dtype.itemsize} "
            f"bytes) but {len(body) - offset} bytes of data follow it"
        )
    if dtype.itemsize == 0 or count == 0:
        return np.zeros(shape, dtype=dtype)
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _as_array(obj: t.Any, what: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPy < 1.24 warns on ragged lists, then objects
            array = np.asarray(to_numpy(obj))
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise EncodeError(f"cannot write the prediction as {what}: {exc}") from None
    if array.dtype.hasobject:
        raise EncodeError(
            f"cannot write the prediction as {what} without pickling: "
            "it is an object array (mixed or ragged values)"
        )
    return array


class NPYHandler(ContentHandler):
    media_type = "application/x-npy"

    def decode(self, body: bytes) -> np.ndarray:
        return read_npy(body)

    def encode(self, obj: t.Any) -> bytes:
        stream = io.BytesIO()
        np.save(stream, _as_array(obj, "NPY"), allow_pickle=False)
        return stream.getvalue()


class NPZHandler(ContentHandler):
    """A zip of NPY members, as ``np.savez`` and scipy's ``save_npz`` write it."""

    media_type = "application/x-npz"
    #: Bytes unpacked per read: a member that lies about its size is caught within one.
    read_chunk: t.ClassVar[int] = 1 << 20

    def decode(self, body: bytes) -> dict[str, np.ndarray]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(body))
            members = archive.infolist()
        except Exception as exc:  # zipfile raises BadZipFile, NotImplementedError, struct.error…
            raise DecodeError(f"body is not a valid NPZ archive: {type(exc).__name__}: {exc}"
                              ) from None
        # All members together may unpack to max_decoded_bytes: a small compressed body
        # must not fill memory. The declared sizes are checked first (one 413 before any
        # unpacking), then each member is read in chunks, counting what really comes out.
        declared = sum(member.file_size for member in members)
        self.check_decoded(declared, f"NPZ members ({len(members)})")
        budget = self.max_decoded_bytes
        arrays: dict[str, np.ndarray] = {}
        for member in members:
            name = member.filename
            data = bytearray()
            try:
                with archive.open(member) as stream:
                    while chunk := stream.read(min(self.read_chunk, budget - len(data) + 1)):
                        data += chunk
                        if len(data) > budget:  # zipfile stops at the declared size; in case
                            raise DecodedTooLarge(f"NPZ member {name} unpacks past its declared "
                                                  f"size", self.max_decoded_bytes)
            except DecodeError:
                raise
            except Exception as exc:  # bad CRC, unknown compression, encryption, truncation…
                raise DecodeError(f"NPZ member {name} cannot be read: {type(exc).__name__}: {exc}"
                                  ) from None
            budget -= len(data)
            key = name[:-4] if name.endswith(".npy") else name
            arrays[key] = read_npy(data, f"NPZ member {name}")
        return arrays

    def encode(self, obj: t.Any) -> bytes:
        """A dict of arrays keeps its names; a single array is stored as ``arr_0``."""
        obj = to_numpy(obj)
        if isinstance(obj, t.Mapping):
            arrays = {str(k): _as_array(v, "NPZ") for k, v in obj.items()}
        else:
            arrays = {"arr_0": _as_array(obj, "NPZ")}
        stream = io.BytesIO()
        with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        return stream.getvalue()
