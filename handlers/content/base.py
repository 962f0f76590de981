"""The content-handler base class and the errors handlers raise."""

from __future__ import annotations

import typing as t

__all__ = ["ContentHandler", "DecodeError", "EncodeError"]


class DecodeError(ValueError):
    """A request body that does not decode as its declared media type (a 400)."""


class EncodeError(ValueError):
    """A prediction that cannot be written as the negotiated media type."""


class ContentHandler:
    """Turns bytes of one media type into an object, and back.

    Subclasses set :attr:`media_type` and write :meth:`decode` and
    :meth:`encode`; that is all a new type needs.
    """

    #: The media type this handler is registered under, lower case, no parameters.
    media_type: t.ClassVar[str] = ""
    #: Other media types that mean the same thing.
    aliases: t.ClassVar[tuple[str, ...]] = ()

    def decode(self, body: bytes) -> t.Any:
        """Decode a request body; raise :class:`DecodeError` when it is malformed."""
        raise NotImplementedError

    def encode(self, obj: t.Any) -> bytes:
        """Encode a prediction; raise :class:`EncodeError` when it cannot be."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.media_type}>"
