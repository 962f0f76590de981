"""examples/image-classifier: JPEG bytes in, {"class", "probability"} JSON out."""

from __future__ import annotations

import io
import random
import sys

import pytest
import requests

from tests.examples.conftest import sdk, served_example
from tests.server_helpers import REPO

pytestmark = pytest.mark.pytorch

sys.path.insert(0, str(REPO / "examples" / "image-classifier"))
from shapes import CLASSES, draw, jpeg  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_example("image-classifier", tmp_path_factory) as server:
        yield server


def pictures(count: int, seed: int = 1):
    rng = random.Random(seed)  # not the training pictures (seed 0)
    return [(CLASSES[i % 3], jpeg(draw(CLASSES[i % 3], rng))) for i in range(count)]


def test_sdk_sends_jpeg_bytes_and_reads_json(server, tmp_path):
    right = 0
    for number, (kind, body) in enumerate(pictures(6)):
        path = tmp_path / f"{number}.jpg"
        path.write_bytes(body)
        answer = sdk(server, "file_payload", {"path": str(path), "content_type": "image/jpeg"})
        result = answer["result"]
        assert set(result) == {"class", "probability"} and result["class"] in CLASSES
        assert 0 < result["probability"] <= 1
        right += result["class"] == kind
    assert right >= 5, f"{right}/6 shapes recognised"


def test_curl_style_jpeg_and_png(server):
    right = 0
    for kind, body in pictures(12, seed=2):
        response = requests.post(server.url(), data=body, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        right += response.json()["class"] == kind
    assert right >= 10, f"{right}/12 shapes recognised"
    # The same picture as PNG, and again: the same answer.
    from PIL import Image

    kind, body = pictures(1, seed=3)[0]
    png = io.BytesIO()
    Image.open(io.BytesIO(body)).save(png, format="PNG")
    answers = [requests.post(server.url(), data=png.getvalue(),
                             headers={"Content-Type": "image/png"}).json() for _ in range(2)]
    assert answers[0] == answers[1]


def test_bad_images_are_400(server):
    response = requests.post(server.url(), data=b"\xff\xd8\xff not a jpeg",
                             headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 400 and "is not JPEG" in response.json()["message"]
    response = requests.post(server.url(), json=[1, 2, 3])
    assert response.status_code == 415 and "send an image" in response.json()["message"]


def test_the_notebooks_call_as_written(server, tmp_path):
    """Seed 004's call: ImagePredictor (serializer None: the bytes as they are, ContentType
    image/jpeg, Accept application/json from json_deserializer; IdentitySerializer and
    JSONDeserializer stand in) on a photo-sized JPEG as a web server gives one:
    progressive, 1200 pixels wide, with EXIF."""
    from PIL import Image

    kind, body = pictures(1, seed=4)[0]
    photo = Image.open(io.BytesIO(body)).convert("RGB").resize((1200, 800))
    exif = Image.Exif()
    exif[0x010F] = "camera"  # Make
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90, progressive=True, exif=exif.tobytes())
    path = tmp_path / "photo.jpg"
    path.write_bytes(buf.getvalue())
    result = sdk(server, "file_payload", {"path": str(path), "content_type": "image/jpeg"})
    assert result["result"]["class"] == kind
