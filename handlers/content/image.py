"""Images: ``image/jpeg``, ``image/png`` and ``application/x-image`` (any format Pillow reads).

Decoding gives an RGB ``uint8`` array of shape (H, W, 3). The pixel count is
checked from the header before any pixel is decoded, so a decompression bomb
is a 400, not an out-of-memory worker.
"""

from __future__ import annotations

import io
import typing as t
import warnings

import numpy as np
from PIL import Image

from handlers.content.base import ContentHandler, DecodeError, EncodeError, to_numpy

#: Most pixels a request image may have (about 8K × 8K).
MAX_PIXELS = 64_000_000


class ImageHandler(ContentHandler):
    """The common image formats in; PNG out (lossless)."""

    media_type = "application/x-image"
    #: Pillow formats accepted on decode. Not "any": Pillow's EPS reader runs Ghostscript,
    #: which no request body should reach.
    formats: t.ClassVar[tuple[str, ...]] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
    #: Pillow format written on encode.
    write_format: t.ClassVar[str] = "PNG"
    max_pixels: t.ClassVar[int] = MAX_PIXELS

    def decode(self, body: bytes) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                # Our own limit applies below; Pillow's bomb warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(body), formats=self.formats)
                width, height = image.size
                if width * height > self.max_pixels:
                    raise DecodeError(
                        f"image is {width}×{height} = {width * height} pixels, more than the "
                        f"limit of {self.max_pixels}"
                    )
                image.load()
                return np.asarray(image.convert("RGB"))
        except DecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise DecodeError(f"image refused: {exc}") from None
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
