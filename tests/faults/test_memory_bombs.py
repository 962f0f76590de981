"""Small bodies that decode to gigabytes: 413 in well under a second, memory bounded."""

from __future__ import annotations

import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.faults.conftest import NUMPY_LINEAR, memory_kib, worker_pids
from tests.server_helpers import wait_for, write_model_dir


def png_of_zeros(side: int = 7999) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")  # ~190 KB on the wire
    return buf.getvalue()


def npz_bomb(gib: int = 1) -> bytes:
    """An NPZ whose one member unpacks to ``gib`` GiB of zeros; about 1 MB per GiB."""
    buf = io.BytesIO()
    count = gib * 2**27  # float64
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    zeros = bytes(2**20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(count * 8 // len(zeros)):
                member.write(zeros)
    return buf.getvalue()


BOMBS = {
    "image/png": png_of_zeros,
    "application/x-npz": npz_bomb,
}


@pytest.fixture(scope="module")
def bombs():
    return {content_type: make() for content_type, make in BOMBS.items()}


def test_bombs_are_413_fast_and_workers_stay_under_1_gb(serve, bombs):
    server = serve(NUMPY_LINEAR, "--workers", "2", "--threads", "4")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "two workers")
    workers = sorted(worker_pids(server))
    assert len(bombs["image/png"]) < 250_000 and len(bombs["application/x-npz"]) < 2_000_000

    for content_type, body in bombs.items():
        started = time.monotonic()
        response = requests.post(server.url(), data=body,
                                 headers={"Content-Type": content_type}, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 413, response.text
        assert response.json()["type"] == "DecodedTooLarge"
        assert "SERVING_MAX_DECODED_MB=128" in response.json()["message"]
        assert elapsed < 1.0, (content_type, elapsed)

    # Four of each at once, twice over.
    def post(item):
        content_type, body = item
        return requests.post(server.url(), data=body, headers={"Content-Type": content_type},
                             timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, list(bombs.items()) * 8))
    assert statuses == [413] * 16
    peaks = {pid: memory_kib(pid, "VmHWM") for pid in worker_pids(server)}
    print(f"\nworker peak RSS after 18 bombs: { {p: f'{k / 1024:.0f} MiB' for p, k in peaks.items()} }")
    assert all(kib < 1024 * 1024 for kib in peaks.values()), peaks
    assert sorted(worker_pids(server)) == workers
    assert requests.post(server.url(), json=[[1, 2, 3]], timeout=5).status_code == 200


def test_a_large_legitimate_image_costs_at_most_about_twice_its_array(serve, tmp_path):
    # 4000 × 3000 RGB = 34 MiB as an array; random pixels so that it is not a bomb, JPEG
    # so that it fits the payload limit. The model only looks at the shape: what is
    # measured is the decoding.
    model = write_model_dir(tmp_path, """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return list(data.shape)
    """)
    server = serve(model, "--workers", "1", "--max-payload-mb", "20")
    (worker,) = worker_pids(server)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3000, 4000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=50)
    before = memory_kib(worker, "VmHWM")
    response = requests.post(server.url(), data=buf.getvalue(),
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.json() == [3000, 4000, 3]
    extra = (memory_kib(worker, "VmHWM") - before) * 1024
    ratio = extra / pixels.nbytes
    print(f"\npeak extra memory {extra / 2**20:.0f} MiB for a {pixels.nbytes / 2**20:.0f} MiB "
          f"array: {ratio:.2f} ×")
    # Pillow holds its pixels at 4 bytes each while the 3-byte array is filled (7/3 ≈ 2.33),
    # plus the body and allocator slack.
    assert ratio <= 3.0
