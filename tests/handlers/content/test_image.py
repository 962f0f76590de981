import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from handlers.content import DecodedTooLarge, DecodeError, EncodeError
from handlers.content.image import ImageHandler, JPEGHandler, PNGHandler


def image_bytes(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def picture(h=24, w=32):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8 % 256, y * 10 % 256, (x + y) * 4 % 256], -1).astype(np.uint8)


def test_png_round_trips_exactly():
    array = picture()
    decoded = PNGHandler().decode(PNGHandler().encode(array))
    assert decoded.dtype == np.uint8 and decoded.shape == (24, 32, 3)
    assert np.array_equal(decoded, array)


def test_jpeg_round_trips_within_compression_error():
    array = picture()
    decoded = JPEGHandler().decode(JPEGHandler().encode(array))
    assert decoded.shape == array.shape
    assert np.abs(decoded.astype(int) - array).mean() < 8


def test_pillow_images_of_any_mode_decode_to_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgba = np.dstack([picture(8, 8), np.full((8, 8), 128, np.uint8)])
    for body in (image_bytes(gray, "PNG"), image_bytes(rgba, "PNG"),
                 image_bytes(picture(), "GIF"), image_bytes(picture(), "BMP")):
        decoded = ImageHandler().decode(body)
        assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3


def test_typed_handlers_refuse_other_formats():
    with pytest.raises(DecodeError, match="not JPEG"):
        JPEGHandler().decode(image_bytes(picture(), "PNG"))


def test_decompression_bomb_is_refused_before_decoding():
    # A 12000 × 9000 PNG of zeros is small on the wire and 324 MB as RGB.
    bomb = image_bytes(np.zeros((9000, 12000), dtype=np.uint8), "PNG")
    assert len(bomb) < 500_000
    with pytest.raises(DecodedTooLarge, match="a 12000×9000 image decodes to 432000000 bytes"):
        ImageHandler().decode(bomb)
    # Past Pillow's own guard (about 179 M pixels) the refusal is the same kind.
    giant = image_bytes(np.zeros((20000, 10000), dtype=np.uint8), "PNG")
    with pytest.raises(DecodedTooLarge, match="decompression bomb"):
        ImageHandler().decode(giant)


@pytest.mark.parametrize("body", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"GIF89a\x00"])
def test_corrupt_images_are_decode_errors(body):
    with pytest.raises(DecodeError, match="is not"):
        ImageHandler().decode(body)


def test_truncated_jpeg_is_a_decode_error():
    body = image_bytes(picture(64, 64), "JPEG")
    with pytest.raises(DecodeError):
        JPEGHandler().decode(body[: len(body) // 2])


def test_encoders_want_uint8_images():
    with pytest.raises(EncodeError, match="uint8 array"):
        PNGHandler().encode(np.zeros((4, 4, 3), dtype=np.float32))
    assert JPEGHandler().encode(np.zeros((4, 4, 4), dtype=np.uint8))[:2] == b"\xff\xd8"


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))))
def test_any_rgb_array_round_trips_through_png(array):
    assert np.array_equal(PNGHandler().decode(PNGHandler().encode(array)), array)


def test_formats_that_run_external_programs_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(DecodeError, match="is not JPEG/PNG/GIF/BMP/TIFF/WEBP/PPM"):
        ImageHandler().decode(eps)
