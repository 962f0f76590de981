"""The content-handler base class, the errors handlers raise, and ``to_numpy``."""

from __future__ import annotations

import typing as t

__all__ = ["ContentHandler", "DEFAULT_MAX_DECODED_BYTES", "DecodeError", "DecodedTooLarge",
           "EncodeError", "to_numpy"]

if t.TYPE_CHECKING:
    import numpy as np


class DecodeError(ValueError):
    """A request body that does not decode as its declared media type (a 400)."""


class DecodedTooLarge(DecodeError):
    """A body that would decode to more memory than the limit allows (a 413).

    Raised before that memory is allocated: from a header, a count or a
    declared size, never after decoding.
    """

    def __init__(self, detail: str, limit_bytes: int) -> None:
        self.detail, self.limit_bytes = detail, limit_bytes
        super().__init__(f"{detail}: over the limit of {limit_bytes} bytes decoded")


#: What a request may decode to unless the server sets another limit (SERVING_MAX_DECODED_MB).
DEFAULT_MAX_DECODED_BYTES = 128 * 2**20


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
    #: Most bytes of memory one body may decode to; the server sets it from
    #: SERVING_MAX_DECODED_MB (``Registry.limit_decoded``). A decoder checks it
    #: with :meth:`check_decoded` before it allocates.
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    def check_decoded(self, nbytes: int, what: str) -> None:
        """Raise :class:`DecodedTooLarge` when ``nbytes`` (about to be allocated) is over the limit."""
        if nbytes > self.max_decoded_bytes:
            raise DecodedTooLarge(f"{what} decodes to {nbytes} bytes", self.max_decoded_bytes)

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
        tensor = obj.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":  # NumPy has none: float32
            tensor = tensor.float()
        return tensor.numpy()
    if module == "mxnet" and hasattr(obj, "asnumpy"):
        return obj.asnumpy()
    if module == "chainer" and hasattr(obj, "array"):
        return to_numpy(obj.array)
    if module == "cupy" and hasattr(obj, "get"):
        return obj.get()
    return obj
