"""The content-handler base class, the errors handlers raise, and ``to_numpy``."""

from __future__ import annotations

import typing as t

__all__ = ["ContentHandler", "DecodeError", "EncodeError", "to_numpy"]

if t.TYPE_CHECKING:
    import numpy as np


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


def to_numpy(obj: t.Any) -> np.ndarray | t.Any:
    """A framework tensor as a NumPy array; anything else unchanged.

    Recognised by duck typing, so no framework is imported to check: PyTorch
    (``detach().cpu().numpy()``), MXNet NDArray (``asnumpy()``), Chainer
    Variable (``.array``), CuPy (``get()``).
    """
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj
    module = type(obj).__module__.split(".")[0]
    if module == "torch" and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    if module == "mxnet" and hasattr(obj, "asnumpy"):
        return obj.asnumpy()
    if module == "chainer" and hasattr(obj, "array"):
        return to_numpy(obj.array)
    if module == "cupy" and hasattr(obj, "get"):
        return obj.get()
    return obj
