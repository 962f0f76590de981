"""SageMaker's bidirectional stream (InvokeEndpointWithBidirectionalStream), as a protocol:
which model a stream's upgrade request is for, the stateful session it joins, and what
answers its messages — the model's ``stream_fn``, else one invocation of the invocation
service a message, its media types negotiated at the upgrade. The WebSocket itself (frames,
limits, pings, close codes) is the host's: :mod:`serving.hosts.gunicorn.websocket`.
"""

from __future__ import annotations

import typing as t

from serving import errors
from serving.contract.invocation import Invocation, Invocations
from serving.contract.sessions import NEW_SESSION, SessionStore, check_session_id
from serving.protocols.sagemaker import TARGET_MODEL_HEADER

if t.TYPE_CHECKING:
    from serving.contract.pipeline import Pipeline

__all__ = ["Answerer", "answerer", "is_text", "stream_model", "stream_session"]

#: Media types answered in text frames (the rest go in binary ones).
TEXT_TYPES = ("application/json", "application/jsonlines", "application/x-ndjson", "text/")


def is_text(media_type: str) -> bool:
    """Whether an answer of ``media_type`` goes in text frames."""
    return media_type.startswith(TEXT_TYPES) or "+json" in media_type


def stream_session(sessions: SessionStore | None, headers: t.Mapping[str, str]) -> t.Any:
    """The stateful session the upgrade request names (read once: the stream holds it
    for its life, and writes its state back at the end), or ``None``."""
    session_id = headers.get("X-Amzn-SageMaker-Session-Id")
    if session_id is None:
        return None
    if sessions is None:
        raise errors.BadRequest("stateful sessions are off: set "
                                "SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true to open one")
    if check_session_id(session_id) == NEW_SESSION:
        raise errors.BadRequest("open a session with an invocation; a stream joins it by id")
    return sessions.get(session_id)


def stream_model(invocations: Invocations, headers: t.Mapping[str, str]) -> Pipeline:
    """The model a stream is for, as an invocation's is chosen (the target model header on
    a multi-model server; a model store's default archive without one)."""
    models = invocations.models
    if not models.ready:
        raise errors.ServiceUnavailable("the model is still loading")
    return invocations.model(headers.get(TARGET_MODEL_HEADER) if models.multi else None,
                             named_in="in X-Amzn-SageMaker-Target-Model")


Answerer = t.Callable[[t.Iterator[t.Union[bytes, str]], t.Any], t.Iterator[t.Any]]


def answerer(pipeline: Pipeline, headers: t.Mapping[str, str], invocations: Invocations,
             request_id: str) -> Answerer:
    """What answers a stream's messages: ``(messages, context) → items to send``. The
    model's stream_fn; else one invocation a message (the invocation service's), its media
    types negotiated now (a Content-Type or Accept the model cannot serve refuses the
    upgrade with 415 or 406)."""
    if pipeline.streams:
        return pipeline.stream
    negotiated = invocations.negotiate(pipeline, headers.get("Content-Type"),
                                       headers.get("Accept"))

    def each_message(messages: t.Iterator[bytes | str], context: t.Any) -> t.Iterator[t.Any]:
        for message in messages:
            body = message.encode("utf-8") if isinstance(message, str) else message
            answer = invocations.invoke(pipeline, Invocation(
                body, negotiated.content_type, None, headers, request_id=request_id,
                custom_attributes=context.custom_attributes,
                target_variant=context.target_variant, inference_id=context.inference_id,
                context={"session": context.session}), negotiated)
            payload, text = answer.body, is_text(answer.media_type)
            # A text frame must be UTF-8: an encoder that wrote another charset is read
            # with replacement characters rather than failing the stream.
            if isinstance(payload, (bytes, bytearray)):
                yield payload.decode("utf-8", "replace") if text else bytes(payload)
            else:  # a streamed answer: one fragmented message, a frame per chunk
                chunks = invocations.chunks(payload, request_id)
                yield (chunk.decode("utf-8", "replace") if text else chunk for chunk in chunks)

    return each_message
