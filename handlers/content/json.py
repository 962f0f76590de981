"""``application/json``: any JSON value; numeric arrays come in and go out as NumPy.

orjson does the work: on a 10 000 × 20 float array it encodes about 20× and
decodes about 2× faster than the standard library (``benchmarks/codecs.py``).

How float16 and float32 numbers are written (``write_float32_as``):

- ``float64``, the default: each value widened to a double and written as the
  shortest double, which is what AWS's containers write (their encoders do
  ``json.dumps(array.tolist())``): ``np.float32(5 - 8.1e-6)`` is
  ``4.9999918937683105``, and a client reading it as a double (every JSON parser)
  gets ``float(np.float32(x))`` exactly, the number the container it migrates from
  gave it. The widening is NumPy's (``astype(np.float64)``), inside the encoder.
- ``shortest``: orjson's shortest float32 form, ``4.999992``: the same float32 when
  read back as one, about half the digits, a different double when read as one.

NaN and infinities, which JSON cannot carry, are written as ``null`` either way
(AWS's ``json.dumps`` writes ``NaN`` and ``Infinity``, which strict parsers refuse).
"""

from __future__ import annotations

import typing as t
import warnings

import numpy as np
import orjson

from handlers.content.base import (
    ContentHandler,
    DecodedTooLarge,
    DecodeError,
    EncodeError,
    to_numpy,
)

#: Given to orjson for arrays only: the rest of an answer is written without it, so that
#: every array and NumPy scalar in it reaches _fallback_numpy.
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

#: The forms :func:`write_float32_as` takes.
FLOAT32_FORMS = ("float64", "shortest")
_float32_form = "float64"


def write_float32_as(form: str) -> None:
    """How every JSON answer of this process writes float16 and float32 values: see the
    module's text. Set once at start-up (``SERVING_JSON_FLOAT32``)."""
    global _float32_form
    if form not in FLOAT32_FORMS:
        raise ValueError(f"float32 form {form!r} is not one of {', '.join(FLOAT32_FORMS)}")
    _float32_form = form


def _fallback(obj: t.Any) -> t.Any:
    """What orjson cannot write itself: tensors, string and object arrays, NumPy scalars."""
    obj = to_numpy(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "S":  # byte strings (scipy's save_npz "format"): as text
            obj = np.char.decode(obj, "utf-8")
        if obj.dtype.hasobject or obj.dtype.kind == "U":
            return obj.tolist()  # strings, objects (their NumPy scalars come back here)
    if isinstance(obj, np.floating):
        return float(obj)  # a float32 widened; a long double cut to the double JSON has
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"a {type(obj).__name__} is not JSON serializable")


def _numbers(array: np.ndarray) -> bytes:
    """A numeric array as JSON at C speed, float16/float32 values in the form set."""
    if array.ndim == 0:  # orjson takes no 0-d arrays: the scalar
        return orjson.dumps(array[()], default=_fallback_numpy)
    if _float32_form == "float64" and array.dtype.kind == "f" and array.dtype.itemsize < 8:
        array = array.astype(np.float64)  # widened in one C loop
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # orjson refuses big-endian
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:  # long double: JSON has doubles
        array = array.astype(np.float64)
    return orjson.dumps(np.ascontiguousarray(array), option=_OPTIONS)


def _fallback_numpy(obj: t.Any) -> t.Any:
    """:func:`_fallback` for an encoder that leaves all of NumPy to it (no
    OPT_SERIALIZE_NUMPY), so that every array and scalar, however deep in the answer,
    is written in the form set: numeric arrays go back pre-written."""
    obj = to_numpy(obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return orjson.Fragment(_numbers(obj))
    if isinstance(obj, np.floating) and obj.dtype.itemsize <= 4 and _float32_form == "shortest":
        return orjson.Fragment(orjson.dumps(obj, option=_OPTIONS))
    return _fallback(obj)  # other NumPy scalars: .item(), a float32 widened


#: NumPy < 1.24 warns on ragged lists (and makes object arrays) instead of raising.
_RAGGED_WARNS = tuple(int(x) for x in np.__version__.split(".")[:2]) < (1, 24)


def as_arrays(value: t.Any) -> t.Any:
    """A numeric (nested) list as a NumPy array; other values unchanged."""
    if not isinstance(value, list):
        return value
    try:
        if _RAGGED_WARNS:
            with warnings.catch_warnings():  # costly, and only NumPy < 1.24 needs it
                warnings.simplefilter("ignore")
                array = np.asarray(value)
        else:
            array = np.asarray(value)
    except (ValueError, TypeError):  # ragged on NumPy >= 1.24
        return value
    return array if array.dtype.kind in "biuf" else value


#: What one parsed JSON value costs in memory, at most, in CPython: a number or string is an
#: object and a list slot (~40 bytes); a list or object adds its own header (~64 bytes).
ELEMENT_BYTES, CONTAINER_BYTES = 40, 64


def check_decoded_size(body: bytes, max_decoded_bytes: int) -> None:
    """Refuse a body whose parsed values would take more than ``max_decoded_bytes``,
    before parsing (:class:`DecodedTooLarge`).

    Counted from separators, so a 6 MB ``[[],[],…]`` is refused at C speed instead of
    becoming two million lists; bodies too short to reach the limit are not counted.
    """
    if len(body) * CONTAINER_BYTES <= max_decoded_bytes:
        return
    containers = body.count(b"[") + body.count(b"{")
    elements = body.count(b",") + body.count(b"\n") + 1
    nbytes = containers * CONTAINER_BYTES + elements * ELEMENT_BYTES
    if nbytes > max_decoded_bytes:
        raise DecodedTooLarge(f"JSON of about {elements} values decodes to {nbytes} bytes",
                              max_decoded_bytes)


def check_elements(handler: ContentHandler, body: bytes) -> None:
    """:func:`check_decoded_size` with the handler's limit."""
    check_decoded_size(body, handler.max_decoded_bytes)


#: How deep one JSON body may nest: orjson's own bound, met before any recursion of
#: ours or of the standard library's (Python's limit is 1000 frames).
MAX_DEPTH = 1024


def loads_bounded(body: bytes, max_decoded_bytes: int, what: str = "body") -> t.Any:
    """``body`` parsed, within the decoded-size limit and :data:`MAX_DEPTH` (orjson's):
    :class:`DecodedTooLarge` or :class:`DecodeError` otherwise, never a RecursionError."""
    check_decoded_size(body, max_decoded_bytes)
    return loads(body, what)


def loads(body: bytes, what: str = "body") -> t.Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}") from None


def dumps(obj: t.Any) -> bytes:
    """``obj`` as JSON, float32 values written as :func:`write_float32_as` says."""
    obj = to_numpy(obj)
    try:
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
            return _numbers(obj)  # the usual answer, with no Fragment to make
        return orjson.dumps(obj, default=_fallback_numpy)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise EncodeError(f"cannot write the prediction as JSON: {exc}") from None


class JSONHandler(ContentHandler):
    media_type = "application/json"

    def decode(self, body: bytes) -> t.Any:
        check_elements(self, body)
        # Numeric (nested) lists are what models eat: hand them over as arrays.
        return as_arrays(loads(body))

    def encode(self, obj: t.Any) -> bytes:
        return dumps(obj)
