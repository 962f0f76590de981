"""Content-type handlers, found by media type through a registry.

``default_registry()`` holds the built-in handlers; a user's ``inference.py``
adds its own with ``handlers.content.register(MyHandler())``.
"""

from __future__ import annotations

import threading
import typing as t

from handlers.content.base import ContentHandler, DecodeError, EncodeError

__all__ = [
    "BUILTIN_HANDLERS",
    "ContentHandler",
    "DecodeError",
    "EncodeError",
    "Registry",
    "default_registry",
    "register",
]

#: The built-in handlers, as dotted paths so that a module is imported only
#: when the registry is first used.
BUILTIN_HANDLERS: tuple[str, ...] = (
    "handlers.content.json.JSONHandler",
    "handlers.content.npy.NPYHandler",
)


class Registry:
    """Media type → handler. Registering a type twice is an error, not an overwrite."""

    def __init__(self) -> None:
        self._handlers: dict[str, ContentHandler] = {}

    def register(self, handler: ContentHandler, *, replace: bool = False) -> None:
        """Add ``handler`` under its media type and aliases.

        :param replace: allow taking over a type that is already registered
            (a user's own JSON handler instead of ours, say).
        """
        names = [handler.media_type, *handler.aliases]
        for name in names:
            if name != name.lower() or "/" not in name or ";" in name:
                raise ValueError(f"{handler!r}: {name!r} is not a bare lower-case media type")
            existing = self._handlers.get(name)
            if existing is not None and not replace:
                raise ValueError(
                    f"{name} is already handled by {existing!r}; "
                    f"pass replace=True to register {handler!r} instead"
                )
        for name in names:
            self._handlers[name] = handler

    def get(self, media_type: str) -> ContentHandler | None:
        return self._handlers.get(media_type)

    @property
    def media_types(self) -> list[str]:
        """Every registered type and alias, in registration order."""
        return list(self._handlers)

    def __contains__(self, media_type: object) -> bool:
        return media_type in self._handlers


_default: Registry | None = None
_default_lock = threading.Lock()


def _load(path: str) -> ContentHandler:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)()


def default_registry() -> Registry:
    """The process-wide registry, with the built-in handlers in it."""
    global _default
    with _default_lock:
        if _default is None:
            registry = Registry()
            for path in BUILTIN_HANDLERS:
                registry.register(_load(path))
            _default = registry
        return _default


def register(handler: ContentHandler, *, replace: bool = False) -> None:
    """Add a handler to the default registry (call it from ``inference.py``)."""
    default_registry().register(handler, replace=replace)
