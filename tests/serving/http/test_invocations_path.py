"""POST /invocations past Flask (serving.http.app.InvocationsPath): the same answer, the
same metrics and the same access line as Flask's route, which stays behind it."""

import logging
import time
import types

import flask
import pytest
from werkzeug.test import EnvironBuilder

from handlers.content import default_registry
from serving.config import Config
from serving.contract.pipeline import Pipeline
from serving.http.app import InvocationsPath, create_app
from serving.http.bridge import call_app
from serving.runtime.metrics import Metrics


def predict_fn(data, model, context):
    if context.headers.get("X-Fail") == "bug":
        raise RuntimeError("secret text")
    if context.headers.get("X-Stream"):
        return iter([[1], [2]])  # a streamed answer, one JSON line per item
    if context.headers.get("X-Echo-Attributes"):
        context.set_custom_attributes(f"seen={context.custom_attributes}")
    return data * model


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    module = types.ModuleType("inference")
    module.__file__ = "inference.py"
    module.model_fn = lambda model_dir: 2
    module.predict_fn = predict_fn
    config = Config.load(["--model-dir", str(model_dir), "--max-payload-mb", "0.001"], {})
    pipeline = Pipeline.from_module(module, default_registry(), model_dir=str(model_dir),
                                    default_accept=config.default_accept)
    pipeline.load_model()
    pipeline.enter_worker(0, "cpu", 1)
    return create_app(config, pipeline, metrics=Metrics(content_types=pipeline.input_types))


#: name: (headers, body)
REQUESTS = {
    "json": ({"Content-Type": "application/json"}, b"[1,2,3]"),
    "csv": ({"Content-Type": "text/csv", "Accept": "text/csv"}, b"1,2\n3,4\n"),
    "custom attributes back": ({"Content-Type": "application/json", "X-Echo-Attributes": "1",
                                "X-Amzn-SageMaker-Custom-Attributes": "a=1"}, b"[1]"),
    "streamed": ({"Content-Type": "application/json", "X-Stream": "1"}, b"[1]"),
    "415": ({"Content-Type": "application/x-nope"}, b"[1]"),
    "406": ({"Content-Type": "application/json", "Accept": "image/gif"}, b"[1]"),
    "400 body": ({"Content-Type": "application/json"}, b"[1,"),
    "400 attributes": ({"Content-Type": "application/json",
                        "X-Amzn-SageMaker-Custom-Attributes": "\x7f"}, b"[1]"),
    "413": ({"Content-Type": "application/json"}, b"[" + b"1," * 600 + b"1]"),
    "500": ({"Content-Type": "application/json", "X-Fail": "bug"}, b"[1]"),
}
STATUS = {"json": 200, "csv": 200, "custom attributes back": 200, "streamed": 200,
          "415": 415, "406": 406, "400 body": 400, "400 attributes": 400, "413": 413,
          "500": 500}


def request_id(name):
    return "id-" + name.replace(" ", "-")


def answer(wsgi, name):
    headers, body = REQUESTS[name]
    environ = EnvironBuilder("/invocations", method="POST", data=body,
                             headers={**headers, "X-Request-Id": request_id(name)}).get_environ()
    environ["serving.arrived"] = time.monotonic()
    got = call_app(wsgi, environ)
    return got.status, got.headers, b"".join(got)


def samples(app):
    """The request and body counters, by series."""
    metrics = app.view_functions["prometheus_metrics"]().get_data(as_text=True)
    return {series: float(value) for series, value in
            (line.rsplit(" ", 1) for line in metrics.splitlines()
             if line.startswith(("serving_requests_total", "serving_request_body_bytes_sum",
                                 "serving_response_body_bytes_sum")))}


def delta(before, after):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_direct_path_answers_as_flask_does(app, name, caplog):
    assert isinstance(app.wsgi_app, InvocationsPath)
    flask_started = []

    def started(sender, **extra):
        flask_started.append(sender)

    caplog.set_level(logging.INFO, logger="serving.access")
    with flask.request_started.connected_to(started, app):
        before = samples(app)
        direct = answer(app.wsgi_app, name)
        after_direct = samples(app)
        assert flask_started == []  # Flask never saw it
        through_flask = answer(app.wsgi_app.flask_app, name)
        assert flask_started == [app]
    assert direct == through_flask
    status, headers, body = direct
    assert int(status.split()[0]) == STATUS[name]
    assert ("X-Request-Id", request_id(name)) in headers
    if name == "json":
        assert body == b"[2,4,6]"
    if name == "custom attributes back":
        assert ("X-Amzn-SageMaker-Custom-Attributes", "seen=a=1") in headers
    if name == "streamed":
        assert body == b"[1]\n[2]\n"
    if name == "500":
        assert b"secret text" not in body and b"RuntimeError" in body
    # Counted alike: what one path added to each series, the other added again.
    added = delta(before, after_direct)
    assert added and added == delta(after_direct, samples(app))
    assert any(k.startswith("serving_requests_total") and f'status="{STATUS[name]}"' in k
               and 'route="/invocations"' in k for k in added), added
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.access"]
    assert len(lines) == 2
    assert lines[0].rsplit(" ", 1)[0] == lines[1].rsplit(" ", 1)[0]  # all but the latency
    assert f'"POST /invocations" {STATUS[name]}' in lines[0]


def test_everything_else_goes_through_flask(app):
    environ = EnvironBuilder("/ping", method="GET").get_environ()
    assert call_app(app.wsgi_app, environ).status == "200 OK"
    environ = EnvironBuilder("/invocations", method="GET").get_environ()
    status, _, body = (lambda a: (a.status, a.headers, a.read()))(call_app(app.wsgi_app, environ))
    assert status.startswith("405") and b"POST" in body
