"""Media types as headers write them: ``type/subtype; k=v`` and Accept's ranges, parsed.

Vocabulary only, importing nothing of the server's: the settings check their default Accept
with it, and negotiation (:mod:`serving.contract.negotiation`) decides with it.
"""

from __future__ import annotations

import functools
import typing as t
from dataclasses import dataclass, field

__all__ = ["MediaRange", "MediaType", "content_type_of", "parse_accept", "parse_media_type"]


def _is_token(text: str) -> bool:
    # RFC 9110 token characters; enough to refuse "garbage" or "a b/c".
    return bool(text) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text)


@dataclass(frozen=True)
class MediaType:
    """``type/subtype`` in lower case, with its parameters."""

    type: str
    subtype: str
    params: t.Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def essence(self) -> str:
        """The bare ``type/subtype``: what handlers are registered under."""
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return self.essence


def parse_media_type(text: str) -> MediaType:
    """Parse ``type/subtype; k=v``; raise ``ValueError`` when it is not one."""
    essence, _, rest = text.partition(";")
    kind, slash, subtype = essence.strip().lower().partition("/")
    if not slash or not _is_token(kind) or not _is_token(subtype):
        raise ValueError(f"{text!r} is not a media type (type/subtype)")
    params = {}
    for item in rest.split(";"):
        key, eq, value = item.partition("=")
        if eq and key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    return MediaType(kind, subtype, params)


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: a media type, ``type/*`` or ``*/*``, with its weight."""

    type: str
    subtype: str
    q: float

    def matches(self, media_type: str) -> bool:
        kind, _, subtype = media_type.partition("/")
        return self.type == "*" or (self.type == kind and self.subtype in ("*", subtype))

    @property
    def is_wildcard(self) -> bool:
        return self.subtype == "*"

    @property
    def specificity(self) -> int:
        return (self.type != "*") + (self.subtype != "*")


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, most preferred first.

    Order: higher ``q`` first, then the client's own order. Entries that do not
    parse are skipped (as browsers and proxies do), ``q=0`` entries are kept so
    that they can exclude a type.
    """
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate((header or "").split(",")):
        if not item.strip():
            continue
        if item.strip().split(";")[0].strip() == "*":  # old clients send a bare "*"
            item = "*/*" + item.strip()[1:]
        try:
            media = parse_media_type(item)
        except ValueError:
            continue
        if media.type == "*" and media.subtype != "*":
            continue
        try:
            q = float(media.params.get("q", "1"))
        except ValueError:
            continue
        q = min(max(q, 0.0), 1.0)
        ranges.append((-q, position, MediaRange(media.type, media.subtype, q)))
    return [r for _, _, r in sorted(ranges, key=lambda entry: entry[:2])]


# Clients send the same few Content-Type and Accept headers again and again: parse each
# once. Bounded, so that a client varying them costs memory no more than this.
@functools.lru_cache(maxsize=512)
def content_type_of(header: str) -> str:
    """The bare media type of a Content-Type header; ``ValueError`` when it is not one."""
    return parse_media_type(header).essence
