"""The invocation service: one invocation of a model, whatever protocol asked for it.

A protocol's adapter (the SageMaker routes, TorchServe's ``/predictions``, KServe's v1 and
v2, a WebSocket's message, a batch transform's record) turns its request into an
:class:`Invocation` and gets an :class:`Answer` back, or a :class:`~serving.errors.ServingError`
to write in its own error body. Everything between is here, once: the model's readiness,
which model (:meth:`Invocations.model`), negotiation, the limits, the context and the
stateful session, the deadline (the runtime's prediction threads), stage metrics and
batching (wired into each pipeline as it is built), and what a streamed answer's later
chunks may do (:meth:`Invocations.chunks`). The adapter knows no model and no limit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing as t

from serving import errors
from serving.contract.context import valid_custom_attributes
from serving.contract.limits import Limits
from serving.contract.models import Models, versioned
from serving.contract.negotiation import Negotiated, negotiate
from serving.contract.pipeline import Pipeline
from serving.contract.sessions import (
    CLOSE,
    CLOSED_HEADER,
    NEW_HEADER,
    NEW_SESSION,
    SessionStore,
    check_session_id,
    session_request_type,
)
from serving.contract.streams import Stream
from serving.runtime import logs

if t.TYPE_CHECKING:
    from serving.runtime.metrics import Metrics

__all__ = ["Answer", "Caller", "Invocation", "Invocations"]

log = logging.getLogger(__name__)

#: SageMaker's custom attributes header: what the model is told, and may answer in kind.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


class Caller(t.Protocol):
    """What runs the model's code under the deadline: the worker's
    :class:`~serving.runtime.executor.Runtime`, or :class:`~serving.runtime.executor.Inline`."""

    deadline_seconds: float

    def call(self, fn: t.Callable[..., t.Any], *args: t.Any,
             started: float | None = None) -> t.Any: ...


@dataclasses.dataclass(slots=True)
class Invocation:
    """What a protocol asks of a model: one body, its media types and headers.

    :param headers: the request's headers as the model's context shows them.
    :param arrived: when the request arrived (``time.monotonic()``): its deadline counts
        from there.
    :param session_requests: whether a JSON body may be a SageMaker session request
        (``{"requestType": "NEW_SESSION"}``); SageMaker's routes only.
    :param streams: whether the answer may be chunks; a protocol that cannot frame them
        gets a 500 naming the model instead.
    :param context: more :class:`~serving.contract.context.Context` fields (a stream's
        path and query, its session).
    """

    body: bytes
    content_type: str | None
    accept: str | None
    headers: t.Mapping[str, str]
    request_id: str = ""
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    custom_attributes: str | None = None
    target_variant: str | None = None
    inference_id: str | None = None
    session_id: str | None = None
    session_requests: bool = False
    streams: bool = True
    context: t.Mapping[str, t.Any] | None = None
    #: The input as the protocol decoded it (the body unused): KServe's envelope for a
    #: TorchServe handler. ``None``: the body, decoded by the pipeline.
    data: t.Any = None
    #: Whether the protocol takes the prediction as it is (``Answer.body``), unencoded.
    raw: bool = False


@dataclasses.dataclass(slots=True)
class Answer:
    """What the model answered: a body (bytes, or a :class:`Stream` of chunks) and its
    media type; a status a TorchServe handler set (``"404 Not Found"``; ``None``: 200);
    headers the model, a session or the custom attributes add."""

    body: bytes | Stream | t.Any  # anything: the prediction itself, for a raw invocation
    media_type: str
    status: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def status_code(self) -> int:
        return int(self.status.split(" ", 1)[0]) if self.status else 200


class Invocations:
    """The one way from an :class:`Invocation` to an :class:`Answer` (see the module)."""

    def __init__(self, models: Models, caller: Caller, limits: Limits, *,
                 default_accept: str, sessions: SessionStore | None = None,
                 metrics: Metrics | None = None) -> None:
        self.models = models
        self.caller = caller
        self.limits = limits
        self.default_accept = default_accept
        self.sessions = sessions
        self.metrics = metrics
        if metrics is not None:  # stage and batch metrics, in every pipeline built from now
            for pipeline in models.loaded():
                self._watch(pipeline)
            models.on_build = self._watch

    def _watch(self, pipeline: Pipeline) -> None:
        metrics = self.metrics
        assert metrics is not None
        pipeline.observe_stage = metrics.stage
        if pipeline.batcher is not None:
            pipeline.batcher.on_batch = metrics.batch
            pipeline.batcher.trial.on_decision = metrics.batching_trial

    # -- which model -----------------------------------------------------------------

    def model(self, name: str | None = None, version: str | None = None, *,
              named_in: str = "the request") -> Pipeline:
        """The model an invocation is for: ``name`` (and ``version``); without a name, the
        server's one model, or the archive named at start on a multi-model server.

        :param named_in: where the protocol takes the name from, for the 400 without one.
        """
        models = self.models
        if name is not None:
            return versioned(models, name, version)
        if not models.multi:
            return models.default
        if models.default_name is not None:  # one archive at start
            return models.get(models.default_name)
        raise errors.BadRequest(f"a multi-model endpoint needs the model's name: {named_in}")

    # -- one invocation ----------------------------------------------------------------

    def negotiate(self, pipeline: Pipeline, content_type: str | None,
                  accept: str | None) -> Negotiated:
        """What ``content_type`` and ``accept`` decide for ``pipeline`` (415, 406), once: a
        stream negotiates at its upgrade and invokes each message with it."""
        if not pipeline.ready:
            raise errors.ServiceUnavailable("the model is still loading")
        return negotiate(content_type, accept, pipeline.decoders, pipeline.encoders,
                         self.default_accept)

    def invoke(self, pipeline: Pipeline, invocation: Invocation,
               negotiated: Negotiated | None = None) -> Answer:
        """Answer ``invocation`` with ``pipeline`` under its deadline."""
        if negotiated is None:
            negotiated = self.negotiate(pipeline, invocation.content_type, invocation.accept)
        elif not pipeline.ready:
            raise errors.ServiceUnavailable("the model is still loading")
        attributes = invocation.custom_attributes
        if attributes is not None and not valid_custom_attributes(attributes):
            raise errors.BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} must be 1-1024 visible ASCII "
                                    f"characters")
        body = invocation.body  # bounded by the front door (Limits.max_payload_bytes)
        reply: dict[str, t.Any] = {}
        details = {"request_id": invocation.request_id, "custom_attributes": attributes,
                   "target_variant": invocation.target_variant,
                   "inference_id": invocation.inference_id, "reply": reply}
        if invocation.context:
            details.update(invocation.context)
        if invocation.session_requests:
            # Only a JSON body can be a session request: others are not looked into.
            kind = (session_request_type(body, self.limits.max_decoded_bytes)
                    if negotiated.content_type.endswith("json") else None)
            if invocation.session_id is not None or kind is not None:
                return self._in_session(pipeline, invocation, negotiated, details, kind)
        started = invocation.arrived
        payload, media_type = self.caller.call(
            pipeline.invoke, body, negotiated, invocation.headers,
            started + self.caller.deadline_seconds, details, invocation.data, invocation.raw,
            started=started)
        return self._answer(payload, media_type, reply, invocation)

    def _answer(self, payload: bytes | Stream, media_type: str, reply: dict[str, t.Any],
                invocation: Invocation) -> Answer:
        if isinstance(payload, Stream) and not invocation.streams:
            payload.close()
            raise errors.ModelError("the model streamed its answer, which this protocol's "
                                    "answer cannot carry", stage="encode")
        if not reply:  # the usual case: nothing more to say
            return Answer(payload, media_type)
        headers = dict(reply.get("headers", ()))
        if "custom_attributes" in reply:
            headers[CUSTOM_ATTRIBUTES_HEADER] = reply["custom_attributes"]
        return Answer(payload, media_type, reply.get("status"), headers)

    def _in_session(self, pipeline: Pipeline, invocation: Invocation, negotiated: Negotiated,
                    details: dict[str, t.Any], kind: str | None) -> Answer:
        """An invocation that opens, uses or closes a stateful session
        (:mod:`serving.contract.sessions`)."""
        sessions = self.sessions
        if sessions is None:
            raise errors.BadRequest("stateful sessions are off: set "
                                    "SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true to open one")
        session_id = invocation.session_id
        if session_id is not None:
            check_session_id(session_id)
        headers, call = invocation.headers, self.caller.call
        if kind == NEW_SESSION:
            session = sessions.open()
            try:
                call(pipeline.session_hook, "open_session_fn", session, headers, details,
                     started=invocation.arrived)
                if session.state:
                    sessions.save(session)
            except BaseException:
                sessions.close(session.id)
                raise
            return Answer(_json_line({"session_id": session.id,
                                      "expires": session.expires_text}),
                          "application/json",
                          headers={NEW_HEADER: f"{session.id}; Expires={session.expires_text}"})
        if session_id is None or session_id == NEW_SESSION:
            raise errors.BadRequest(
                f"{'CLOSE' if kind == CLOSE else 'this request'} needs an open session's id in "
                f"X-Amzn-SageMaker-Session-Id (NEW_SESSION goes with "
                f'{{"requestType": "NEW_SESSION"}})')
        # The session's lock is waited for at most --session-wait (then 429), and the
        # model's deadline counts from when it is held: a request that waited behind
        # another of its session never reaches the model with its time spent, so it
        # cannot run past its deadline and make the worker retire.
        if kind == CLOSE:
            with sessions.use(session_id) as session:
                call(pipeline.session_hook, "close_session_fn", session, headers, details,
                     started=time.monotonic())
            sessions.close(session_id)
            return Answer(_json_line({"closed_session_id": session_id}), "application/json",
                          headers={CLOSED_HEADER: session_id})
        with sessions.use(session_id) as session:
            details["session"] = session
            held = time.monotonic()
            payload, media_type = call(pipeline.invoke, invocation.body, negotiated, headers,
                                       held + self.caller.deadline_seconds, details,
                                       started=held)
        return self._answer(payload, media_type, details["reply"], invocation)

    # -- a streamed answer's chunks ----------------------------------------------------

    def chunks(self, stream: Stream, request_id: str) -> t.Iterator[bytes]:
        """The chunks of a streamed answer, the first as made, each later one pulled on a
        prediction thread under a deadline of its own (the request deadline, from when it
        was asked for); empty chunks skipped. What breaks the stream is logged and raised
        (a :class:`~serving.errors.ServingError`, or what the model raised); the stream
        is closed whatever happens."""
        sent = 0
        try:
            if stream.first:
                yield stream.first
            sent = 1
            rest, done = stream.rest, _DONE
            while True:
                token = logs.request_id.set(request_id)  # the request's context may be gone
                try:
                    chunk = self.caller.call(next, rest, done)
                except Exception as exc:
                    log.error("the streamed answer broke off after %d chunk(s): %s", sent,
                              exc if isinstance(exc, errors.ServingError)
                              else f"{type(exc).__name__}: {exc}",
                              exc_info=not isinstance(exc, errors.ServingError))
                    raise
                finally:
                    logs.request_id.reset(token)
                if chunk is done:
                    return
                if chunk:
                    yield chunk
                    sent += 1
        finally:
            stream.close()

    def whole(self, answer: Answer, request_id: str) -> bytes:
        """The answer's body whole: a streamed one's chunks joined (batch transform)."""
        if isinstance(answer.body, Stream):
            return b"".join(self.chunks(answer.body, request_id))
        return answer.body


_DONE = object()


def _json_line(document: dict[str, t.Any]) -> bytes:
    return json.dumps(document).encode("utf-8") + b"\n"
