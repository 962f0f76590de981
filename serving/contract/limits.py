"""What a request may make a worker hold, whatever protocol brought it: :class:`Limits`, made
once from the settings and handed to the front door and the invocation service (nothing
pushes limits into handler instances); and :func:`json_document`, the decoded-size limit
and the nesting bound of a JSON body (``--max-decoded-mb``), so that KServe's v1 and v2,
TorchServe's ``/predictions`` and the session check keep the same promise as
``/invocations``' content handlers."""

from __future__ import annotations

import dataclasses
import typing as t

from handlers.content.base import DecodedTooLarge, DecodeError
from handlers.content.json import MAX_DEPTH, loads_bounded
from serving import errors

if t.TYPE_CHECKING:
    from serving.config import Config

__all__ = ["Limits", "MAX_DEPTH", "json_document"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The per-request size limits the front door and the invocation service read. A new
    one: a field here, its setting in :class:`~serving.config.Config`, and the line of
    :meth:`from_config` between them. Kept where they are enforced, not copied here: the
    deadline (the runtime's ``deadline_seconds``) and the session lock's wait (the
    session store's)."""

    #: The most a request's body may be, in bytes (413 past it; ``--max-payload-mb``).
    max_payload_bytes: int
    #: The most a body may decode to, in bytes (413; ``--max-decoded-mb``).
    max_decoded_bytes: int

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(max_payload_bytes=config.max_payload_bytes,
                   max_decoded_bytes=config.max_decoded_bytes)


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
