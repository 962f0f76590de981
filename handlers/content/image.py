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
                if image.mode != "RGB":
                    rgb = image.convert("RGB")
                    image.close()  # free the decoded original before the array is made
                    image = rgb
                return np.asarray(image)
        except DecodeError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow's own guard, past ~179 M pixels
            raise DecodedTooLarge(f"image refused: {exc}", self.max_decoded_bytes) from None
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
