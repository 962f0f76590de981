"""The invocation service with no server and no protocol: an Invocation in, an Answer (or a
typed error) out; readiness, targeting, negotiation, deadline, sessions and streamed chunks
decided here, once, for every adapter."""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

from handlers.content import default_registry
from serving import errors
from serving.config import Config
from serving.contract.invocation import Answer, Invocation, Invocations
from serving.contract.limits import Limits
from serving.contract.models import DEFAULT_MODEL, Models
from serving.contract.pipeline import Pipeline
from serving.contract.sessions import session_store
from serving.contract.streams import Stream
from serving.runtime.executor import Inline, Runtime


def pipeline_of(tmp_path, load=True, **functions):
    module = types.ModuleType("inference")
    module.__file__ = "inference.py"
    for name, fn in functions.items():
        setattr(module, name, fn)
    pipeline = Pipeline.from_module(module, default_registry(), model_dir=str(tmp_path),
                                    default_accept="application/json")
    if load:
        pipeline.load_model()
    return pipeline


def service(tmp_path, pipelines, argv=(), caller=None):
    config = Config.load(["--model-dir", str(tmp_path), *argv], {})
    models = Models(pipelines) if isinstance(pipelines, dict) else \
        Models({DEFAULT_MODEL: pipelines})
    return Invocations(models, caller or Runtime(2, config.deadline_seconds),
                       Limits.from_config(config), default_accept=config.default_accept,
                       sessions=session_store(config))


def doubler(tmp_path, **options):
    return pipeline_of(tmp_path, model_fn=lambda model_dir: (lambda x: np.asarray(x) * 2),
                       **options)


def test_an_invocation_is_answered_with_the_negotiated_type(tmp_path):
    invocations = service(tmp_path, doubler(tmp_path))
    pipeline = invocations.model()
    answer = invocations.invoke(pipeline, Invocation(b"[1, 2]", "application/json",
                                                     "application/json", {}))
    assert isinstance(answer, Answer)
    assert (answer.body, answer.media_type, answer.status_code) == (b"[2,4]", "application/json",
                                                                    200)


def test_what_no_handler_reads_or_writes_is_refused_before_the_model(tmp_path):
    calls = []
    invocations = service(tmp_path, pipeline_of(
        tmp_path, model_fn=lambda d: (lambda x: calls.append(x) or x)))
    pipeline = invocations.model()
    with pytest.raises(errors.UnsupportedMediaType):
        invocations.invoke(pipeline, Invocation(b"x", "text/x-nothing", None, {}))
    with pytest.raises(errors.NotAcceptable):
        invocations.invoke(pipeline, Invocation(b"[1]", "application/json", "image/x-none", {}))
    assert calls == []


def test_a_model_still_loading_is_503(tmp_path):
    invocations = service(tmp_path, doubler(tmp_path, load=False))
    with pytest.raises(errors.ServiceUnavailable, match="still loading"):
        invocations.invoke(invocations.model(), Invocation(b"[1]", None, None, {}))


def test_a_bad_request_in_the_model_is_a_400_and_a_failure_a_500_naming_the_stage(tmp_path):
    def predict_fn(data, model):
        if data == [0]:
            raise ValueError("secret detail")
        raise errors.ClientError("no negatives", status_code=422)

    invocations = service(tmp_path, pipeline_of(tmp_path, model_fn=lambda d: None,
                                                predict_fn=predict_fn))
    pipeline = invocations.model()
    with pytest.raises(errors.ClientError) as refused:
        invocations.invoke(pipeline, Invocation(b"[-1]", None, None, {}))
    assert refused.value.status_code == 422
    with pytest.raises(errors.ModelError) as failed:
        invocations.invoke(pipeline, Invocation(b"[0]", None, None, {}))
    assert failed.value.status_code == 500 and "secret" not in failed.value.message
    assert "predict_fn raised ValueError" in failed.value.message


def test_the_deadline_counts_from_arrival(tmp_path):
    invocations = service(tmp_path, pipeline_of(
        tmp_path, model_fn=lambda d: None, predict_fn=lambda data, model: data),
        argv=["--request-timeout", "1"])
    late = Invocation(b"[1]", None, None, {}, arrived=time.monotonic() - 5)
    with pytest.raises(errors.DeadlineExceeded):
        invocations.invoke(invocations.model(), late)


def test_targeting_names_versions_and_the_multi_model_default(tmp_path):
    a, b = doubler(tmp_path), doubler(tmp_path)
    invocations = service(tmp_path, {"a": a, "b": b})
    assert invocations.model("b") is b
    with pytest.raises(errors.NotFound):
        invocations.model("c")
    with pytest.raises(errors.NotFound, match="no version 2"):
        invocations.model("a", "2")  # not an archive: it has no versions

    class Repository(Models):
        multi = True

    multi = Repository({"a": a, "b": b}, default=None)
    many = Invocations(multi, Inline(60), invocations.limits, default_accept="application/json")
    with pytest.raises(errors.BadRequest, match="needs the model's name: in its header"):
        many.model(named_in="in its header")
    multi.default_name = "b"  # a model store's one archive at start
    assert many.model() is b


def test_a_protocol_that_cannot_carry_chunks_gets_a_500_and_the_stream_is_closed(tmp_path):
    closed = threading.Event()

    def predict_fn(data, model):
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.set()

    invocations = service(tmp_path, pipeline_of(tmp_path, model_fn=lambda d: None,
                                                predict_fn=predict_fn))
    pipeline = invocations.model()
    answer = invocations.invoke(pipeline, Invocation(b"[1]", None, "*/*", {}))
    assert isinstance(answer.body, Stream)
    assert b"".join(invocations.chunks(answer.body, "r1")) == b"onetwo"
    assert closed.wait(5)
    closed.clear()
    with pytest.raises(errors.ModelError, match="streamed its answer"):
        invocations.invoke(pipeline, Invocation(b"[1]", None, "*/*", {}, streams=False))
    assert closed.wait(5)


def test_a_chunk_past_the_deadline_breaks_the_stream_off(tmp_path):
    def predict_fn(data, model):
        yield b"first"
        time.sleep(3)
        yield b"late"

    invocations = service(tmp_path, pipeline_of(tmp_path, model_fn=lambda d: None,
                                                predict_fn=predict_fn),
                          argv=["--request-timeout", "1"])
    answer = invocations.invoke(invocations.model(), Invocation(b"[1]", None, "*/*", {}))
    chunks = invocations.chunks(answer.body, "r1")
    assert next(chunks) == b"first"
    with pytest.raises(errors.DeadlineExceeded):
        next(chunks)


def test_sessions_open_use_and_close_through_the_same_invocations(tmp_path):
    def open_session_fn(session, model, context):
        session.state["count"] = 0

    def predict_fn(data, model, context):
        context.session.state["count"] += 1
        return [context.session.state["count"]]

    config = Config.load(["--model-dir", str(tmp_path)],
                         {"SAGEMAKER_ENABLE_STATEFUL_SESSIONS": "true",
                          "SAGEMAKER_SESSIONS_PATH": str(tmp_path / "sessions")})
    pipeline = pipeline_of(tmp_path, model_fn=lambda d: None, predict_fn=predict_fn,
                           open_session_fn=open_session_fn)
    invocations = Invocations(Models({DEFAULT_MODEL: pipeline}), Inline(60),
                              Limits.from_config(config), default_accept="application/json",
                              sessions=session_store(config))

    def session_call(body, session_id=None):
        return invocations.invoke(pipeline, Invocation(
            body, "application/json", None, {}, session_id=session_id,
            session_requests=True))

    opened = session_call(b'{"requestType": "NEW_SESSION"}')
    session_id = opened.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    assert session_call(b"[0]", session_id).body == b"[1]"
    assert session_call(b"[0]", session_id).body == b"[2]"
    closed = session_call(b'{"requestType": "CLOSE"}', session_id)
    assert closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session_id
    with pytest.raises(errors.BadRequest, match="no session"):
        session_call(b"[0]", session_id)
    # Another protocol's invocation is never read as a session request.
    echo = pipeline_of(tmp_path, model_fn=lambda d: None, predict_fn=lambda data, model: data)
    plain = invocations.invoke(echo, Invocation(b'{"requestType": "NEW_SESSION"}',
                                                "application/json", None, {}))
    assert plain.body == b'{"requestType":"NEW_SESSION"}' and plain.headers == {}
