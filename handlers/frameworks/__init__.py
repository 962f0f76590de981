"""Framework handlers: the default ``model_fn`` and ``predict_fn`` of each framework.

Each lives in its own module and imports its framework only when used; this
module finds which one serves a model, from a setting, the model directory's
files, or the type of model a user's ``model_fn`` returned, without importing
any framework to decide.
"""

from __future__ import annotations

import importlib
import typing as t

from handlers.frameworks.base import FrameworkHandler, SelectionError

__all__ = ["FRAMEWORKS", "FrameworkHandler", "SelectionError", "framework_of_model", "load",
           "detect_from_files", "files_help"]

#: Short name → handler class, as a dotted path: a framework is imported only when chosen.
#: A new framework: its module here, one line below, and its extra in setup.py.
FRAMEWORKS: dict[str, str] = {
    "pytorch": "handlers.frameworks.pytorch.PyTorchHandler",
    "chainer": "handlers.frameworks.chainer.ChainerHandler",
    "mxnet": "handlers.frameworks.mxnet.MXNetHandler",
}



def _handler_class(name: str) -> type[FrameworkHandler]:
    module, _, attribute = FRAMEWORKS[name].rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def load(name: str, settings: t.Mapping[str, t.Any] | None = None) -> FrameworkHandler:
    """The handler called ``name``, with its framework imported (``settings``: the
    server's, by name, for the handler to read its own)."""
    return _handler_class(name)(settings)


def detect_from_files(model_dir: str) -> str | None:
    """The framework whose files are in ``model_dir``; ``None`` when there are none.

    Raises :class:`SelectionError` when files of several frameworks are there.
    """
    found = {}
    for name in FRAMEWORKS:
        files = _handler_class(name).artifacts(model_dir)
        if files:
            found[name] = files
    if len(found) > 1:
        said = "; ".join(f"{', '.join(files)} ({name})" for name, files in found.items())
        raise SelectionError(
            f"the model directory holds files of several frameworks: {said}; "
            f"set SERVING_FRAMEWORK to the one to serve"
        )
    return next(iter(found), None)


def framework_of_model(model: t.Any) -> str | None:
    """The framework a model object belongs to, from its class hierarchy alone."""
    packages = {_handler_class(name).package: name for name in FRAMEWORKS}
    for cls in type(model).__mro__:
        name = packages.get(cls.__module__.split(".")[0])
        if name:
            return name
    return None


def files_help() -> str:
    """The files the frameworks' default loaders read, for a message: ``model.pt, ...
    (pytorch); ...``."""
    return "; ".join(f"{_handler_class(name).files_help} ({name})" for name in FRAMEWORKS
                     if _handler_class(name).files_help)
