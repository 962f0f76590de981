"""Media types: parsing Content-Type and choosing a response type from Accept.

:func:`negotiate` decides a request's Content-Type and Accept before the model
runs (:class:`Negotiated`): 415 and 406 for what no handler reads or writes, and
the handlers that will. Two 406s can only be known later, and :class:`Negotiated`
raises them too when the pipeline tells it: no acceptable encoder could write the
prediction (each refused it in turn), or a streamed answer's type, known at its
first item, is not acceptable.

Matching ignores parameters (``application/json; charset=utf-8`` is
``application/json``), and the response Content-Type is always the bare
media type, because the SDK's deserializers compare it exactly.
"""

from __future__ import annotations

import functools
import typing as t
from dataclasses import dataclass

from serving import errors
from serving.media_types import (
    MediaRange,
    MediaType,
    content_type_of,
    parse_accept,
    parse_media_type,
)

__all__ = ["DEFAULT_CONTENT_TYPE", "MediaRange", "MediaType", "Negotiated", "acceptable_types",
           "choose_accept", "content_type_of", "negotiate", "parse_accept", "parse_media_type"]


def _weight(ranges: list[MediaRange], media_type: str) -> float:
    """The q the client gives ``media_type``: that of the most specific matching range."""
    best: MediaRange | None = None
    for r in ranges:
        if r.matches(media_type) and (best is None or r.specificity > best.specificity):
            best = r
    return best.q if best is not None else 0.0


def acceptable_types(
    header: str | None, offered: t.Sequence[str] | None, default: str
) -> list[str]:
    """Every response media type the Accept header allows, most preferred first.

    The server tries them in this order: when the first cannot encode a
    prediction (a float array as PNG, say), the next one is tried. Empty: 406.

    :param header: the Accept header as sent (``None`` when absent).
    :param offered: the types the server can encode, or ``None`` when user code
        encodes and so could answer with anything.
    :param default: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, chosen for a missing
        header, ``*/*``, and any wildcard it satisfies.
    """
    ranges = parse_accept(header)
    if not ranges:
        # Missing, empty or wholly unparseable: the client expressed no preference.
        return [default]
    chosen: list[str] = []

    def consider(candidate: str) -> None:
        if candidate not in chosen and (offered is None or candidate in offered) \
                and _weight(ranges, candidate) > 0:
            chosen.append(candidate)

    for r in ranges:
        if r.q <= 0:
            break
        if not r.is_wildcard:
            consider(f"{r.type}/{r.subtype}")
            continue
        # A wildcard: the default when it fits, then the offered types that do.
        for candidate in [default, *(offered or ())]:
            if r.matches(candidate):
                consider(candidate)
                if offered is None:  # user code encodes: the default stands for the rest
                    break
    return chosen


def choose_accept(
    header: str | None, offered: t.Sequence[str] | None, default: str
) -> str | None:
    """The preferred response media type for an Accept header, or ``None`` for 406."""
    acceptable = acceptable_types(header, offered, default)
    return acceptable[0] if acceptable else None


#: The Content-Type a request without one is taken to have.
DEFAULT_CONTENT_TYPE = "application/json"


@functools.lru_cache(maxsize=512)
def _acceptable(header: str | None, offered: tuple[str, ...] | None,
                default: str) -> list[str]:
    return acceptable_types(header, offered, default)


@dataclass(frozen=True)
class Negotiated:
    """What a request's Content-Type and Accept decided, before the model runs: the types,
    and the handlers that decode and encode them. The pipeline takes these as they are."""

    #: The request's bare media type.
    content_type: str
    #: The acceptable answer types, most preferred first (never empty; do not change it:
    #: it is cached).
    accepts: t.Sequence[str]
    #: The handler that decodes the body; ``None`` where user code decodes.
    decoder: t.Any = None
    #: ``(media type, handler)`` for each of :attr:`accepts`, in order, where the server
    #: encodes: the first that can write the prediction answers. Empty where user code
    #: encodes.
    encoders: tuple[tuple[str, t.Any], ...] = ()
    #: The Accept header as sent: a streamed answer's type is known only at its first item.
    accept_header: str | None = None

    def require(self, media_type: str, why: str) -> None:
        """406 unless the Accept header allows an answer of ``media_type``."""
        essence = media_type.partition(";")[0]
        if not _acceptable(self.accept_header, (essence,), essence):
            raise errors.NotAcceptable(self.accept_header or "", [essence], detail=why)

    def none_could_write(self, refusals: t.Sequence[str]) -> t.NoReturn:
        """406: every encoder of :attr:`encoders` refused the prediction."""
        raise errors.NotAcceptable(", ".join(self.accepts), list(self.accepts),
                                   detail=f"the prediction cannot be written as any "
                                          f"acceptable type: {'; '.join(refusals)}")


def negotiate(
    content_type_header: str | None, accept_header: str | None,
    decoders: t.Mapping[str, t.Any] | None, encoders: t.Mapping[str, t.Any] | None,
    default_accept: str,
) -> Negotiated:
    """Everything a request's two media-type headers decide, in one place.

    :param decoders: media type → the handler that decodes it (``None``: user code takes
        any type); ``encoders``: the same for answers (``None``: user code writes any).
    :raises UnsupportedMediaType: 415, a Content-Type that is not one, or not decodable.
    :raises NotAcceptable: 406, no encodable type that the Accept header allows.
    """
    try:
        content_type = (content_type_of(content_type_header) if content_type_header
                        else DEFAULT_CONTENT_TYPE)
    except ValueError:
        raise errors.UnsupportedMediaType(content_type_header or "", list(decoders or ())) \
            from None
    if decoders is not None and content_type not in decoders:
        raise errors.UnsupportedMediaType(content_type, list(decoders))
    encodable = tuple(encoders) if encoders is not None else None
    accepts = _acceptable(accept_header, encodable, default_accept)
    if not accepts:
        raise errors.NotAcceptable(accept_header or "", encodable or [])
    return Negotiated(
        content_type, accepts,
        decoder=decoders[content_type] if decoders is not None else None,
        encoders=tuple((m, encoders[m]) for m in accepts) if encoders is not None else (),
        accept_header=accept_header)
