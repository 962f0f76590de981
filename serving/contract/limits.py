"""What a request may make a worker hold, as every protocol's adapter asks it: one place
for the decoded-size limit and the nesting bound of a JSON body (``--max-decoded-mb``),
so that KServe's v1 and v2, TorchServe's ``/predictions`` and the session check keep the
same promise as ``/invocations``' content handlers."""

from __future__ import annotations

import typing as t

from handlers.content.base import DecodedTooLarge, DecodeError
from handlers.content.json import MAX_DEPTH, loads_bounded
from serving import errors

__all__ = ["MAX_DEPTH", "json_document"]


def json_document(body: bytes, max_decoded_bytes: int, what: str = "the request",
                  error: type[errors.ClientError] = errors.BadRequest) -> t.Any:
    """``body`` as JSON, refused before it is parsed when it would decode to more than
    ``max_decoded_bytes`` (413), and a 400 (``error``) when it is not JSON or nests
    deeper than :data:`MAX_DEPTH`."""
    try:
        return loads_bounded(body, max_decoded_bytes, what)
    except DecodedTooLarge as exc:
        raise errors.DecodedTooLarge(exc.detail, exc.limit_bytes) from None
    except DecodeError as exc:
        raise error(str(exc)) from None
