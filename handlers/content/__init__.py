"""Content-type handlers, found by media type through a registry.

``default_registry()`` holds the built-in handlers and the installed plugins. Each
model's code gets a registry of its own layered over it (:meth:`Registry.layer`):
``handlers.content.register(MyHandler())`` in a model's ``inference.py`` adds to
that model's layer, so two models of one multi-model server may each handle a
media type their own way, and a model loaded again starts from a fresh layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import typing as t

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
    "registering_into",
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
    """Media type → handler. Registering a type twice is an error, not an overwrite.

    :param parent: a registry this one is layered over: its types are looked up when
        this one lacks them, and registering one of them here needs ``replace=True``
        (which shadows it in this layer only).
    """

    def __init__(self, parent: Registry | None = None) -> None:
        self._handlers: dict[str, ContentHandler] = {}
        self.parent = parent
        #: Set by :meth:`limit_decoded`: given to every handler registered later too.
        self._max_decoded_bytes: int | None = None

    def layer(self) -> Registry:
        """A new registry over this one, for one model's own handlers."""
        return Registry(parent=self)

    def register(self, handler: ContentHandler, *, replace: bool = False) -> None:
        """Add ``handler`` under its media type and aliases.

        :param replace: allow taking over a type that is already registered
            (a user's own JSON handler instead of ours, say).
        """
        names = [handler.media_type, *handler.aliases]
        for name in names:
            if name != name.lower() or "/" not in name or ";" in name:
                raise ValueError(f"{handler!r}: {name!r} is not a bare lower-case media type")
            existing = self.get(name)
            if existing is not None and not replace:
                raise ValueError(
                    f"{name} is already handled by {existing!r}; "
                    f"pass replace=True to register {handler!r} instead"
                )
        for name in names:
            self._handlers[name] = handler
        layer: Registry | None = self
        while layer is not None:  # the nearest limit set, on this layer or one below
            if layer._max_decoded_bytes is not None:
                handler.max_decoded_bytes = layer._max_decoded_bytes
                break
            layer = layer.parent

    def limit_decoded(self, max_bytes: int) -> None:
        """Set the most memory one body may decode to, on every handler this registry
        answers with (its parents' too), and on those registered here later."""
        self._max_decoded_bytes = max_bytes
        for handler in {id(h): h for h in map(self.get, self.media_types)}.values():
            if handler is not None:
                handler.max_decoded_bytes = max_bytes

    def get(self, media_type: str) -> ContentHandler | None:
        handler = self._handlers.get(media_type)
        if handler is None and self.parent is not None:
            return self.parent.get(media_type)
        return handler

    @property
    def media_types(self) -> list[str]:
        """Every type and alias this registry answers for: its parents' first, then its
        own, each in registration order."""
        if self.parent is None:
            return list(self._handlers)
        return list(dict.fromkeys([*self.parent.media_types, *self._handlers]))

    def __contains__(self, media_type: object) -> bool:
        return isinstance(media_type, str) and self.get(media_type) is not None


_default: Registry | None = None
_default_lock = threading.Lock()
#: Where :func:`register` adds, while a model's code is imported or its model_fn runs.
_target: contextvars.ContextVar[Registry | None] = contextvars.ContextVar(
    "serving_registry_target", default=None)


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


@contextlib.contextmanager
def registering_into(registry: Registry) -> t.Iterator[Registry]:
    """While inside, :func:`register` adds to ``registry`` (in this thread and context)."""
    token = _target.set(registry)
    try:
        yield registry
    finally:
        _target.reset(token)


def register(handler: ContentHandler, *, replace: bool = False) -> Registry:
    """Add a handler for the model whose code calls it (call it from ``inference.py``, at
    import or in ``model_fn``); outside any model's code, to the default registry.

    Returns the registry it was added to.
    """
    registry = _target.get() or default_registry()
    registry.register(handler, replace=replace)
    return registry
