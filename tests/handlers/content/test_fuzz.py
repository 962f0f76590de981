"""Random and mangled bodies at every registered decoder: only DecodeError may come out."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.content import DecodeError, default_registry

REGISTRY = default_registry()
HANDLERS = sorted({id(h): h for h in map(REGISTRY.get, REGISTRY.media_types)}.values(),
                  key=lambda h: h.media_type)


def _valid_samples():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    samples = [REGISTRY.get(t).encode(array) for t in
               ("application/json", "application/jsonlines", "text/csv", "application/x-npy",
                "application/x-npz", "application/x-recordio-protobuf")]
    image = np.zeros((8, 8, 3), np.uint8)
    samples += [REGISTRY.get(t).encode(image) for t in ("image/jpeg", "image/png")]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="GIF")
    return samples + [buf.getvalue()]


SAMPLES = _valid_samples()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(handler, body):
    try:
        handler.decode(body)
    except DecodeError:
        pass  # the one error a bad body may give: a 400


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.media_type)
@FUZZ
@given(body=st.binary(max_size=512))
def test_random_bytes(handler, body):
    _decode(handler, body)


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.media_type)
@FUZZ
@given(data=st.data())
def test_mangled_valid_bodies(handler, data):
    body = bytearray(data.draw(st.sampled_from(SAMPLES)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if action == "flip" and body:
            body[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del body[at:at + data.draw(st.integers(1, 16))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _decode(handler, bytes(body))
