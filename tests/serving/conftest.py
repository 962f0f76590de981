import os

import pytest


@pytest.fixture
def own_environment(monkeypatch):
    """An environment of the test's own: the assembly sets the math libraries' thread
    variables (as ``serve`` does, before any framework starts), which must not reach the
    servers later tests start."""
    from serving.assembly.build import THREAD_VARIABLES

    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in THREAD_VARIABLES:
        os.environ.pop(name, None)
