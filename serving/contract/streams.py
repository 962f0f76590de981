"""Streamed answers: a hosting function that returns an iterator answers chunk by chunk."""

from __future__ import annotations

import collections.abc
import typing as t

__all__ = ["STREAM_TYPES", "Stream", "close_quietly", "is_stream"]


class Stream:
    """An answer sent as it is produced (HTTP chunked transfer encoding).

    ``predict_fn``, ``output_fn`` or ``transform_fn`` returned an iterator (a generator,
    say): each item becomes a chunk as it comes, bytes and str as they are, anything
    else as one line of JSON (JSON Lines). The first chunk is made before the answer
    starts, so an error up to there is an ordinary error answer with its status; the
    host pulls each later one under its own deadline.
    """

    __slots__ = ("first", "rest", "_source")

    def __init__(self, first: bytes, rest: t.Iterator[bytes], source: t.Iterator[t.Any]) -> None:
        self.first, self.rest, self._source = first, rest, source

    def close(self) -> None:
        """Close the user's iterator (its ``finally`` blocks run), when it is not running."""
        close_quietly(self._source)


def is_stream(value: object) -> bool:
    """Whether a prediction or an answer is to be streamed: an iterator (bytes, arrays
    and lists are iterable, not iterators)."""
    return isinstance(value, collections.abc.Iterator)


#: What a stream of each kind of item is sent as, when no output_fn says.
STREAM_TYPES = {bytes: "application/octet-stream", str: "text/plain; charset=utf-8",
                object: "application/jsonlines"}


def close_quietly(items: t.Any) -> None:
    """Close a user's iterator, unless it is still running (in a thread past its deadline)."""
    close = getattr(items, "close", None)
    if close is not None:
        try:
            close()
        except ValueError:  # still running in a thread past its deadline
            pass
