import os

import pytest

# Settings the server reads from the environment: a test sets the ones it means.
_SERVING_ENV = ("SM_", "SAGEMAKER_", "SERVING_")


@pytest.fixture(autouse=True)
def _clean_serving_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(_SERVING_ENV):
            monkeypatch.delenv(name)
