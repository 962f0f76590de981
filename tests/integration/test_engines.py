"""serve --engine: the engine the image runs is chosen by SERVING_ENGINE, and one that is
not installed is refused with what to install (the Ray engine's own tests are tests/ray)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.server_helpers import REPO, run_serve


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None,
                    reason="Ray is installed here: tests/ray serve with it")
def test_ray_engine_without_ray_says_what_to_install():
    result = run_serve("--model-dir", str(REPO / "examples" / "numpy-linear" / "model"),
                       env={"SERVING_ENGINE": "ray"})
    assert result.returncode == 1
    assert "pip install 'serving-toolkit[ray]'" in result.stderr


def test_unknown_engine_is_refused():
    result = run_serve("--model-dir", str(REPO / "examples" / "numpy-linear" / "model"),
                       "--engine", "uvicorn")
    assert result.returncode == 2 and "--engine='uvicorn'" in result.stderr
