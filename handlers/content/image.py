"""Images: ``image/jpeg``, ``image/png`` and ``application/x-image`` (any format Pillow reads).

Decoding gives an RGB ``uint8`` array of shape (H, W, 3). Its size is checked
from the header before any pixel is decoded, so a decompression bomb (a small
PNG of 8000 × 8000 zeros) is a 413, not an out-of-memory worker.
"""

from __future__ import annotations

import io
import typing as t
import warnings

import numpy as np
from PIL import Image

from handlers.content.base import (
    ContentHandler,
    DecodedTooLarge,
    DecodeError,
    EncodeError,
    to_numpy,
)

#: Bytes of Pillow image copied into the array at a time.
STRIP_BYTES = 1 << 22


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array, filled strip by strip.

    ``np.asarray(image)`` costs twice the array on top of Pillow's own pixels (its
    ``tobytes`` joins chunks, then NumPy copies). Strips of a few MB keep the peak at
    Pillow's pixels plus the array, and convert other modes to RGB a strip at a time
    instead of making a whole RGB copy first.
    """
    width, height = image.size
    array = np.empty((height, width, 3), dtype=np.uint8)
    rows = array.reshape(height, width * 3)
    step = max(1, STRIP_BYTES // (width * 4))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        strip = image.crop((0, top, width, bottom))
        if strip.mode != "RGB":
            strip = strip.convert("RGB")
        rows[top:bottom] = np.frombuffer(strip.tobytes(), np.uint8).reshape(bottom - top, -1)
    image.close()
    return array


class ImageHandler(ContentHandler):
    """The common image formats in; PNG out (lossless)."""

    media_type = "application/x-image"
    #: Pillow formats accepted on decode. Not "any": Pillow's EPS reader runs Ghostscript,
    #: which no request body should reach.
    formats: t.ClassVar[tuple[str, ...]] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
    #: Pillow format written on encode.
    write_format: t.ClassVar[str] = "PNG"

    def decode(self, body: bytes) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                # Our own limit applies below; Pillow's bomb warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(body), formats=self.formats)
                width, height = image.size
                # Pillow holds RGB at 4 bytes a pixel while the 3-byte array is made.
                self.check_decoded(width * height * 4, f"a {width}×{height} image")
                image.load()
                return _rgb_array(image)
        except DecodeError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow's own guard, past ~179 M pixels
            raise DecodedTooLarge(f"image refused: {exc}", self.max_decoded_bytes) from None
        except Image.UnidentifiedImageError:  # its message is the repr of our buffer
            kind = "/".join(self.formats)
            raise DecodeError(f"body is not {kind}: not an image of that format") from None
        except Exception as exc:  # Pillow raises many types for corrupt data
            kind = "/".join(self.formats)
            raise DecodeError(f"body is not {kind}: {type(exc).__name__}: {exc}") from None

    def encode(self, obj: t.Any) -> bytes:
        array = np.asarray(to_numpy(obj))
        if array.dtype != np.uint8 or not (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
        ):
            raise EncodeError(
                f"an image is a uint8 array of shape (H, W), (H, W, 3) or (H, W, 4); "
                f"the prediction is {array.dtype} {array.shape}"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        image = Image.fromarray(array)
        if self.write_format == "JPEG" and image.mode == "RGBA":
            image = image.convert("RGB")
        stream = io.BytesIO()
        image.save(stream, format=self.write_format)
        return stream.getvalue()


class JPEGHandler(ImageHandler):
    media_type = "image/jpeg"
    aliases = ("image/jpg",)
    formats = ("JPEG",)
    write_format = "JPEG"


class PNGHandler(ImageHandler):
    media_type = "image/png"
    formats = ("PNG",)
    write_format = "PNG"
