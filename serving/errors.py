"""The errors the server answers with, and the one users raise.

Every error a request can end in is a :class:`ServingError`; the app turns
any of them into a JSON body ``{"code", "type", "message", ...}`` in one
place (``serving/http/app.py``)::

    ServingError (500)
     ├── ClientError (4xx; users raise it, status chosen by them, default 400)
     │    ├── BadRequest (400)            body does not decode
     │    ├── NotFound (404)              no such route
     │    ├── MethodNotAllowed (405)      route exists, method does not
     │    ├── NotAcceptable (406)         no offered type satisfies Accept
     │    ├── RequestTimeout (408)        headers or body sent too slowly
     │    ├── PayloadTooLarge (413)       body over SAGEMAKER_MAX_PAYLOAD_IN_MB
     │    ├── DecodedTooLarge (413)       body decodes to more than SERVING_MAX_DECODED_MB
     │    ├── URITooLong (414)            request line too long
     │    ├── UnsupportedMediaType (415)  no decoder for Content-Type
     │    └── HeadersTooLarge (431)       too many or too long header fields
     ├── ModelError (500)                 an exception in user code or the model
     ├── ServiceUnavailable (503)         the model is not loaded yet, or the server is stopping
     └── DeadlineExceeded (504)           the request ran past SERVING_REQUEST_TIMEOUT

:class:`StartupError` is not an HTTP error: it stops ``serve`` before it
listens, with one clear line.
"""

from __future__ import annotations

import typing as t
from http import HTTPStatus

__all__ = [
    "BadRequest",
    "ClientError",
    "DeadlineExceeded",
    "DecodedTooLarge",
    "HeadersTooLarge",
    "MethodNotAllowed",
    "ModelError",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "ServingError",
    "StartupError",
    "URITooLong",
    "UnsupportedMediaType",
]


class StartupError(Exception):
    """A problem found before serving: bad settings, bad user code."""


class ServingError(Exception):
    """Base of every error that ends a request; carries its HTTP status."""

    status_code: int = 500

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.message = message or HTTPStatus(self.status_code).phrase
        super().__init__(self.message)

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers."""
        return {}

    def to_dict(self) -> dict[str, t.Any]:
        """The JSON body of the error response."""
        return {"code": self.status_code, "type": type(self).__name__, "message": self.message}


class ClientError(ServingError):
    """A request the client got wrong. Raise it from any hosting function.

    ``raise ClientError("field 'text' is missing", status_code=422)`` answers
    422 with that message in the JSON body; the default status is 400.
    """

    status_code = 400

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        if status_code is not None and not 400 <= status_code <= 499:
            raise ValueError(f"ClientError needs a 4xx status code, not {status_code}")
        super().__init__(message, status_code=status_code)


class BadRequest(ClientError):
    status_code = 400


class NotFound(ClientError):
    status_code = 404


class Conflict(ClientError):
    status_code = 409


class MethodNotAllowed(ClientError):
    status_code = 405

    def __init__(self, method: str, path: str, allowed: t.Iterable[str]) -> None:
        self.allowed = sorted(allowed)
        super().__init__(f"{method} is not allowed on {path}; allowed: {', '.join(self.allowed)}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class _MediaTypeError(ClientError):
    """A media-type mismatch; the body lists what the server does support."""

    def __init__(self, message: str, supported: t.Iterable[str]) -> None:
        self.supported = list(supported)
        super().__init__(message)

    def to_dict(self) -> dict[str, t.Any]:
        return {**super().to_dict(), "supported": self.supported}


class UnsupportedMediaType(_MediaTypeError):
    status_code = 415

    def __init__(self, content_type: str, supported: t.Iterable[str]) -> None:
        supported = list(supported)
        super().__init__(
            f"Content-Type {content_type!r} is not supported; send one of: {', '.join(supported)}",
            supported,
        )


class NotAcceptable(_MediaTypeError):
    status_code = 406

    def __init__(self, accept: str, supported: t.Iterable[str], detail: str | None = None) -> None:
        supported = list(supported)
        super().__init__(
            detail or f"no response type satisfies Accept {accept!r}; the server can answer "
            f"with: {', '.join(supported)}",
            supported,
        )


class PayloadTooLarge(ClientError):
    status_code = 413

    def __init__(self, limit_bytes: int, size: int | None = None) -> None:
        self.limit_bytes = limit_bytes
        said = f"{size} bytes" if size is not None else "the request body"
        super().__init__(
            f"{said} is over the limit of {limit_bytes} bytes "
            f"(SAGEMAKER_MAX_PAYLOAD_IN_MB={limit_bytes / 2**20:g})"
        )


class DecodedTooLarge(ClientError):
    status_code = 413

    def __init__(self, detail: str, limit_bytes: int) -> None:
        super().__init__(
            f"{detail}: over the limit of {limit_bytes} bytes decoded "
            f"(SERVING_MAX_DECODED_MB={limit_bytes / 2**20:g})"
        )


class RequestTimeout(ClientError):
    status_code = 408


class URITooLong(ClientError):
    status_code = 414


class HeadersTooLarge(ClientError):
    status_code = 431


class ModelError(ServingError):
    """An exception raised by user code or the model while answering.

    The body says which stage failed and the exception's type, in our words; the
    exception's own text may hold paths or data, so it is left out unless
    ``SERVING_DEBUG_ERRORS`` is on. The traceback always goes to the log.
    """

    status_code = 500

    def __init__(self, message: str | None = None, *, stage: str | None = None,
                 exception: str | None = None) -> None:
        self.stage, self.exception = stage, exception
        super().__init__(message)

    def to_dict(self) -> dict[str, t.Any]:
        body = super().to_dict()
        if self.stage is not None:
            body["stage"] = self.stage
        if self.exception is not None:
            body["exception"] = self.exception
        return body


class UpgradeRequired(ClientError):
    """426: a WebSocket path asked for without a WebSocket upgrade, or with a version of
    the protocol other than 13 (RFC 6455 4.4)."""

    status_code = 426

    @property
    def headers(self) -> dict[str, str]:
        return {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}


class ServiceUnavailable(ServingError):
    status_code = 503


class InsufficientStorage(ServingError):
    """507: a model that the memory budget cannot hold (the multi-model contract's answer;
    SageMaker then unloads models and tries again)."""

    status_code = 507


class DeadlineExceeded(ServingError):
    status_code = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within the request deadline of {seconds:g} s "
                         f"(SERVING_REQUEST_TIMEOUT)")


class StreamAborted(Exception):
    """A streamed answer broke off after its status line left: the host closes the
    connection without ending the chunked body, so the client sees it cut short."""
