"""Content-type handlers, found by media type through a registry.

``default_registry()`` holds the built-in handlers; a user's ``inference.py``
adds its own with ``handlers.content.register(MyHandler())``.
"""

from __future__ import annotations

import threading

from handlers.content.base import (
    ContentHandler,
    DecodedTooLarge,
    DecodeError,
    EncodeError,
    to_numpy,
)

__all__ = [
    "BUILTIN_HANDLERS",
    "ContentHandler",
    "DecodeError",
    "DecodedTooLarge",
    "ENTRY_POINT_GROUP",
    "EncodeError",
    "PluginError",
    "Registry",
    "default_registry",
    "load_entry_points",
    "register",
    "to_numpy",
]

#: The built-in handlers, as dotted paths so that a module is imported only
#: when the registry is first used.
BUILTIN_HANDLERS: tuple[str, ...] = (
    "handlers.content.json.JSONHandler",
    "handlers.content.jsonlines.JSONLinesHandler",
    "handlers.content.csv.CSVHandler",
    "handlers.content.npy.NPYHandler",
    "handlers.content.npy.NPZHandler",
    "handlers.content.recordio.RecordIOHandler",
    "handlers.content.image.JPEGHandler",
    "handlers.content.image.PNGHandler",
    "handlers.content.image.ImageHandler",
    "handlers.content.text.TextHandler",
    "handlers.content.text.OctetStreamHandler",
)

#: The entry-point group through which installed packages add handlers. Each entry
#: point names a ContentHandler subclass (or instance), e.g. in pyproject.toml:
#: ``[project.entry-points."serving.content_handlers"] avro = "mypkg.avro:AvroHandler"``
ENTRY_POINT_GROUP = "serving.content_handlers"


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

    def limit_decoded(self, max_bytes: int) -> None:
        """Set the most memory one body may decode to, on every registered handler."""
        for handler in set(self._handlers.values()):
            handler.max_decoded_bytes = max_bytes

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


class PluginError(ValueError):
    """An installed content-handler plugin that cannot be used; names the plugin."""


def _load(path: str) -> ContentHandler:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)()


def load_entry_points(registry: Registry, group: str = ENTRY_POINT_GROUP) -> int:
    """Register the handlers installed packages declare in ``group``; return how many.

    A plugin that fails to import, is not a handler, or takes a media type that is
    already registered raises :class:`PluginError`: a clash shows at start-up.
    """
    from importlib.metadata import entry_points

    count = 0
    for entry_point in entry_points(group=group):
        where = f"plugin {entry_point.name} ({entry_point.value}"
        dist = getattr(entry_point, "dist", None)
        where += f", from {dist.name}" if dist is not None else ""
        where += ")"
        try:
            loaded = entry_point.load()
            handler = loaded() if isinstance(loaded, type) else loaded
        except Exception as exc:
            raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
        if not isinstance(handler, ContentHandler):
            raise PluginError(f"{where} is a {type(handler).__name__}, not a ContentHandler")
        try:
            registry.register(handler)
        except ValueError as exc:
            raise PluginError(f"{where}: {exc}") from None
        count += 1
    return count


def default_registry() -> Registry:
    """The process-wide registry: the built-in handlers, then installed plugins."""
    global _default
    with _default_lock:
        if _default is None:
            registry = Registry()
            for path in BUILTIN_HANDLERS:
                registry.register(_load(path))
            load_entry_points(registry)
            _default = registry
        return _default


def register(handler: ContentHandler, *, replace: bool = False) -> None:
    """Add a handler to the default registry (call it from ``inference.py``)."""
    default_registry().register(handler, replace=replace)
