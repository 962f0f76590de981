"""The optional trailing ``context`` argument of every hosting function, and what it
carries back (``X-Amzn-SageMaker-Custom-Attributes``)."""

from __future__ import annotations

import dataclasses
import typing as t

__all__ = ["MAX_CUSTOM_ATTRIBUTES", "Context", "valid_custom_attributes"]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a hosting function may want to know beyond its data."""

    #: The model directory (``SM_MODEL_DIR``).
    model_dir: str
    #: This worker's index, 0 … workers-1; ``None`` in the master (a preloaded ``model_fn``).
    worker_index: int | None = None
    #: The device this worker computes on: ``"cpu"``, ``"cuda:0"``, …
    device: str = "cpu"
    #: The request headers (case-insensitive); empty for ``model_fn``.
    headers: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The request's bare media type, and the answer type negotiated first (``None`` for
    #: ``model_fn``).
    content_type: str | None = None
    accept: str | None = None
    #: This request's id: the caller's ``X-Amzn-SageMaker-Inference-Id``, ``X-Request-Id``
    #: or ``X-Amzn-RequestId``, else one made up; it is in every log line of the request.
    request_id: str | None = None
    #: ``X-Amzn-SageMaker-Custom-Attributes``: the caller's ``CustomAttributes``, as sent.
    custom_attributes: str | None = None
    #: ``X-Amzn-SageMaker-Target-Variant``: the production variant the caller asked for.
    target_variant: str | None = None
    #: ``X-Amzn-SageMaker-Inference-Id``: the caller's ``InferenceId``.
    inference_id: str | None = None
    #: A bidirectional stream's path and query, as the client named them
    #: (``X-Amzn-SageMaker-Model-Invocation-Path``, ``…-Query-String``); ``None`` elsewhere.
    path: str | None = None
    query: str | None = None
    #: The request's stateful session (:class:`serving.contract.sessions.Session`: its
    #: ``id``, ``state`` kept between requests, ``directory``), ``None`` without one.
    session: t.Any = None
    # What the request's answer carries besides its body (see set_custom_attributes).
    reply: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def set_custom_attributes(self, value: str) -> None:
        """Send ``value`` back to the caller in ``X-Amzn-SageMaker-Custom-Attributes``
        (the ``CustomAttributes`` of ``invoke_endpoint``'s response): at most 1024
        visible ASCII characters."""
        if not valid_custom_attributes(value):
            raise ValueError(f"custom attributes must be 1-{MAX_CUSTOM_ATTRIBUTES} visible "
                             f"ASCII characters, not {value[:40]!r}")
        self.reply["custom_attributes"] = value


#: Longest ``X-Amzn-SageMaker-Custom-Attributes`` value (SageMaker's own limit).
MAX_CUSTOM_ATTRIBUTES = 1024


def valid_custom_attributes(value: object) -> bool:
    """1 to 1024 visible US-ASCII characters, spaces and tabs (an HTTP field value)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_CUSTOM_ATTRIBUTES
            and all(" " <= c <= "~" or c == "\t" for c in value))
