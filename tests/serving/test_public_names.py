"""Each package says what it offers: ``__all__`` names only what is there, once, and the
packages users and plugins import from (``serving``, ``handlers.content``,
``handlers.frameworks``) offer what their README and docs promise."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import handlers
import serving

REPO = Path(__file__).resolve().parents[2]


def modules(package) -> list[str]:
    found = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        found.append(info.name)
    return found


#: Modules that need a framework or Ray to import: named in __all__ all the same.
NEEDS_EXTRA = {"handlers.frameworks.chainer": "chainer", "handlers.frameworks.mxnet": "mxnet",
               "handlers.frameworks.pytorch": "torch", "serving.hosts.ray": None}


@pytest.mark.parametrize("name", [n for n in modules(serving) + modules(handlers)
                                  if n != "serving.__main__"])
def test_all_names_what_is_there_once(name):
    extra = NEEDS_EXTRA.get(name)
    if extra:
        pytest.importorskip(extra)
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:  # a content handler module: it registers, it exports nothing
        assert name.startswith("handlers.content."), f"{name} has no __all__"
        return
    assert len(exported) == len(set(exported)), f"{name}: a name twice in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"


def test_what_user_code_imports_is_offered():
    # The names inference.py files and plugins import (docs/user-guide.md, handlers/content/README.md).
    assert {"ClientError"} <= set(serving.__all__)
    import handlers.content as content

    assert {"ContentHandler", "register"} <= set(content.__all__)


def test_packages_are_typed():
    for package in ("serving", "handlers"):
        assert (REPO / package / "py.typed").is_file()
