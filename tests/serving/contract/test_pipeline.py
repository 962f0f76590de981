"""The hosting-function contract, through the Flask test client (no sockets)."""

import io
import types

import numpy as np
import pytest

from handlers.content import default_registry
from serving import ClientError
from serving.config import Config
from serving.contract.pipeline import Pipeline
from serving.errors import StartupError
from serving.http.app import create_app


def module(**functions):
    mod = types.ModuleType("inference")
    mod.__file__ = "inference.py"
    for name, fn in functions.items():
        setattr(mod, name, fn)
    return mod


def make_pipeline(tmp_path, mod, default_accept="application/json", **options):
    return Pipeline.from_module(mod, default_registry(), model_dir=str(tmp_path),
                                default_accept=default_accept, **options)


def make_client(tmp_path, mod, argv=(), load=True):
    config = Config.load(["--model-dir", str(tmp_path), *argv], {})
    pipeline = make_pipeline(tmp_path, mod, config.default_accept,
                             debug_errors=config.debug_errors)
    if load:
        pipeline.load_model()
        pipeline.enter_worker(7, "cpu", 1)
    return create_app(config, pipeline).test_client()


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def doubler(tmp_path, **extra):
    return make_client(tmp_path, module(model_fn=lambda model_dir: (lambda x: x * 2), **extra))


# -- resolution ------------------------------------------------------------------


def test_transform_fn_with_the_others_is_a_startup_error(tmp_path):
    mod = module(model_fn=lambda d: None, transform_fn=lambda m, d, c, a: b"",
                 predict_fn=lambda d, m: d, output_fn=lambda p, a: b"")
    with pytest.raises(StartupError, match="cannot be defined with output_fn, predict_fn"):
        make_pipeline(tmp_path, mod)


def test_no_model_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="nothing to serve: inference.py has no model_fn"):
        make_pipeline(tmp_path, module())
    with pytest.raises(StartupError, match="nothing to serve: no user script was found"):
        make_pipeline(tmp_path, None)


def test_wrong_arity_is_a_startup_error(tmp_path):
    mod = module(model_fn=lambda d: None, predict_fn=lambda data: data)
    with pytest.raises(StartupError, match=r"predict_fn\(data\) must take \(data, model\)"):
        make_pipeline(tmp_path, mod)


def test_default_accept_without_encoder_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="text/html"):
        make_pipeline(tmp_path, module(model_fn=lambda d: abs), "text/html")


def test_uncallable_model_without_predict_fn_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="model_fn returned a dict"):
        make_client(tmp_path, module(model_fn=lambda d: {"w": 1}))


def test_model_fn_runs_once_per_process(tmp_path):
    calls = []
    mod = module(model_fn=lambda d: calls.append(d) or abs)
    pipeline = make_pipeline(tmp_path, mod)
    for _ in range(3):
        pipeline.load_model()
    assert calls == [str(tmp_path)]


def test_context_argument_is_passed_when_asked_for(tmp_path):
    seen = {}

    def model_fn(model_dir, context):
        seen["model_fn"] = context
        return "model"

    def predict_fn(data, model, context):
        seen["predict_fn"] = context
        return {"model": model, "worker": context.worker_index,
                "trace": context.headers.get("x-trace-id")}

    client = make_client(tmp_path, module(model_fn=model_fn, predict_fn=predict_fn))
    response = client.post("/invocations", json=[1], headers={"X-Trace-Id": "abc"})
    assert response.get_json() == {"model": "model", "worker": 7, "trace": "abc"}
    assert seen["model_fn"].model_dir == str(tmp_path)
    assert seen["model_fn"].worker_index is None  # preloaded in the master
    assert seen["predict_fn"].device == "cpu"


# -- requests --------------------------------------------------------------------


def test_json_round_trip_gives_arrays_to_the_model(tmp_path):
    seen = []
    client = make_client(tmp_path, module(
        model_fn=lambda d: None,
        predict_fn=lambda data, model: seen.append(data) or data.sum(axis=1)))
    response = client.post("/invocations", data="[[1,2,3],[4,5,6]]",
                           content_type="application/json; charset=utf-8")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_json() == [6, 15]
    assert isinstance(seen[0], np.ndarray) and seen[0].shape == (2, 3)


def test_missing_content_type_means_json(tmp_path):
    response = doubler(tmp_path).post("/invocations", data=b"[1, 2]")
    assert response.status_code == 200 and response.get_json() == [2, 4]


def test_npy_round_trip(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = doubler(tmp_path).post("/invocations", data=npy(array),
                                      headers={"Content-Type": "application/x-npy",
                                               "Accept": "application/x-npy"})
    assert response.headers["Content-Type"] == "application/x-npy"
    result = np.load(io.BytesIO(response.data), allow_pickle=False)
    assert result.dtype == np.float32 and np.array_equal(result, array * 2)


def test_accept_list_and_weights(tmp_path):
    client = doubler(tmp_path)
    response = client.post("/invocations", json=[1],
                           headers={"Accept": "text/html, application/x-npy;q=0.5, */*;q=0.1"})
    assert response.headers["Content-Type"] == "application/x-npy"
    response = client.post("/invocations", json=[1], headers={"Accept": "*/*"})
    assert response.headers["Content-Type"] == "application/json"


def test_default_accept_setting(tmp_path):
    client = make_client(tmp_path, module(model_fn=lambda d: abs),
                         ["--default-accept", "application/x-npy"])
    response = client.post("/invocations", json=[-1])
    assert response.headers["Content-Type"] == "application/x-npy"


def test_unsupported_content_type_is_415_naming_the_supported(tmp_path):
    response = doubler(tmp_path).post("/invocations", data="1,2", content_type="text/x-unknown")
    assert response.status_code == 415
    body = response.get_json()
    assert body["code"] == 415 and "text/x-unknown" in body["message"]
    assert {"application/json", "application/x-npy"} <= set(body["supported"])


def test_unacceptable_accept_is_406_naming_the_supported(tmp_path):
    response = doubler(tmp_path).post("/invocations", json=[1], headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert "application/json" in response.get_json()["supported"]


@pytest.mark.parametrize(
    "body, content_type, says",
    [
        (b"[[1, 2]", "application/json", "not valid JSON"),
        (b"\xff\xfe[1]", "application/json", "not valid UTF-8"),
        (b"\x93NUMPY garbage", "application/x-npy", "not a valid NPY"),
        (npy(np.arange(10))[:-8], "application/x-npy", "declares shape (10,)"),
        (npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", "pickles are refused"),
    ],
)
def test_bodies_that_do_not_decode_are_400(tmp_path, body, content_type, says):
    response = doubler(tmp_path).post("/invocations", data=body, content_type=content_type)
    assert response.status_code == 400
    assert says in response.get_json()["message"]


def test_payload_over_the_limit_is_413(tmp_path):
    client = make_client(tmp_path, module(model_fn=lambda d: abs), ["--max-payload-mb", "0.001"])
    response = client.post("/invocations", data=b"[" + b"1," * 1000 + b"1]")
    assert response.status_code == 413
    assert "over the limit of 1048 bytes" in response.get_json()["message"]
    assert client.post("/invocations", data=b"[1]").status_code == 200


def test_user_client_error_keeps_its_status(tmp_path):
    def predict_fn(data, model):
        raise ClientError("field 'text' is missing", status_code=422)

    response = make_client(tmp_path, module(predict_fn=predict_fn)).post(
        "/invocations", json={}, headers={"X-Request-Id": "req-7"})
    assert response.status_code == 422
    assert response.get_json() == {"code": 422, "type": "ClientError",
                                   "message": "field 'text' is missing", "request_id": "req-7"}
    assert response.headers["X-Request-Id"] == "req-7"


def test_client_error_refuses_a_non_4xx_status():
    with pytest.raises(ValueError):
        ClientError("nope", status_code=500)


def test_exception_in_user_code_is_500_naming_stage_and_type_not_text(tmp_path, caplog):
    def predict_fn(data, model):
        raise FileNotFoundError("/opt/ml/model/secret/weights.bin")

    response = make_client(tmp_path, module(predict_fn=predict_fn)).post("/invocations", json=[1])
    assert response.status_code == 500
    body = response.get_json()
    assert body.pop("request_id") == response.headers["X-Request-Id"]
    assert body == {"code": 500, "type": "ModelError",
                    "message": "predict_fn raised FileNotFoundError",
                    "stage": "predict", "exception": "FileNotFoundError"}
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" in caplog.text and "/opt/ml/model/secret/weights.bin" in caplog.text


def test_debug_errors_put_the_exception_text_in_the_body(tmp_path):
    def predict_fn(data, model):
        raise RuntimeError("weights are NaN")

    client = make_client(tmp_path, module(predict_fn=predict_fn), ["--debug-errors"])
    response = client.post("/invocations", json=[1])
    assert response.status_code == 500
    assert response.get_json()["message"] == "predict_fn raised RuntimeError: weights are NaN"


def test_unencodable_prediction_is_406_naming_the_types_tried(tmp_path):
    client = make_client(tmp_path, module(predict_fn=lambda d, m: object()))
    response = client.post("/invocations", json=[1])
    assert response.status_code == 406
    body = response.get_json()
    assert body["supported"] == ["application/json"]
    assert "cannot be written as any acceptable type" in body["message"]


def test_accept_falls_back_to_the_next_type_that_can_encode(tmp_path):
    # PNG is preferred but cannot hold a float array: JSON, the next acceptable type, answers.
    client = make_client(tmp_path, module(predict_fn=lambda d, m: np.asarray(d, dtype=float)))
    response = client.post("/invocations", json=[[0.5, 1.5]],
                           headers={"Accept": "image/png;q=0.9, application/json;q=0.5"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_json() == [[0.5, 1.5]]
    refused = client.post("/invocations", json=[[0.5]], headers={"Accept": "image/png, text/plain"})
    assert refused.status_code == 406
    assert refused.get_json()["supported"] == ["image/png", "text/plain"]


def test_output_fn_may_return_body_and_content_type(tmp_path):
    client = make_client(tmp_path, module(
        predict_fn=lambda d, m: "hello",
        output_fn=lambda prediction, accept: (prediction.upper(), "text/plain")))
    response = client.post("/invocations", json=[1], headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain" and response.data == b"HELLO"


def test_output_fn_gets_the_negotiated_accept(tmp_path):
    client = make_client(tmp_path, module(
        predict_fn=lambda d, m: d, output_fn=lambda prediction, accept: accept))
    response = client.post("/invocations", json=[1], headers={"Accept": "text/csv, */*"})
    assert response.data == b"text/csv" and response.headers["Content-Type"] == "text/csv"


def test_output_fn_returning_a_dict_is_500_that_says_so(tmp_path):
    client = make_client(tmp_path, module(predict_fn=lambda d, m: d,
                                          output_fn=lambda p, a: {"x": 1}))
    response = client.post("/invocations", json=[1])
    assert response.status_code == 500 and "must return bytes or str" in response.get_json()["message"]


def test_transform_fn_gets_raw_body_and_bare_content_type(tmp_path):
    def transform_fn(model, data, content_type, accept):
        return data[::-1], "application/octet-stream"

    client = make_client(tmp_path, module(transform_fn=transform_fn))
    response = client.post("/invocations", data=b"abc",
                           content_type="application/weird; charset=latin-1")
    assert response.data == b"cba"


def test_input_fn_gets_bare_content_type(tmp_path):
    client = make_client(tmp_path, module(
        input_fn=lambda body, content_type: content_type,
        predict_fn=lambda data, model: data))
    response = client.post("/invocations", data=b"x", content_type="Text/Plain; charset=utf-8")
    assert response.get_json() == "text/plain"


def test_endpoints_route_is_the_same_handler(tmp_path):
    response = doubler(tmp_path).post("/endpoints/my-endpoint/invocations", json=[3])
    assert response.status_code == 200 and response.get_json() == [6]


def test_ping_is_503_until_the_model_is_loaded(tmp_path):
    client = make_client(tmp_path, module(model_fn=lambda d: abs), load=False)
    assert client.get("/ping").status_code == 503
    response = client.post("/invocations", json=[1])
    assert response.status_code == 503 and response.get_json()["code"] == 503


def test_ping_and_execution_parameters(tmp_path):
    client = make_client(tmp_path, module(model_fn=lambda d: abs),
                         ["--workers", "3", "--max-payload-mb", "20"])
    assert client.get("/ping").status_code == 200
    assert client.get("/execution-parameters").get_json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 20}


def test_unknown_routes_and_methods_are_json(tmp_path):
    client = doubler(tmp_path)
    response = client.get("/nope")
    assert response.status_code == 404 and response.get_json()["code"] == 404
    response = client.get("/invocations")
    assert response.status_code == 405 and response.get_json()["code"] == 405
    assert "POST" in response.headers["Allow"]


# -- streamed answers ----------------------------------------------------------------


def streaming(tmp_path, items, **extra):
    def predict_fn(data, model):
        yield from items
    return make_client(tmp_path, module(model_fn=lambda d: None, predict_fn=predict_fn, **extra))


@pytest.mark.parametrize("items, media_type, body", [
    (["a ", "b ", "c"], "text/plain; charset=utf-8", b"a b c"),
    ([b"\x00\x01", b"\x02"], "application/octet-stream", b"\x00\x01\x02"),
    ([{"x": 1}, [1, 2], np.arange(2)], "application/jsonlines", b'{"x":1}\n[1,2]\n[0,1]\n'),
])
def test_an_iterator_from_predict_fn_is_streamed_by_its_first_item(tmp_path, items, media_type,
                                                                   body):
    response = streaming(tmp_path, items).post("/invocations", json=[1])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == media_type
    assert response.is_streamed and "Content-Length" not in response.headers
    assert response.get_data() == body


def test_a_stream_the_accept_header_refuses_is_406(tmp_path):
    client = streaming(tmp_path, ["a"])
    response = client.post("/invocations", json=[1], headers={"Accept": "application/json"})
    assert response.status_code == 406 and response.json["supported"] == ["text/plain"]
    assert client.post("/invocations", json=[1], headers={"Accept": "text/*"}).status_code == 200


def test_an_empty_stream_is_an_empty_answer(tmp_path):
    response = streaming(tmp_path, []).post("/invocations", json=[1])
    assert response.status_code == 200 and response.get_data() == b""


def test_output_fn_may_stream_with_its_own_content_type(tmp_path):
    client = make_client(tmp_path, module(
        model_fn=lambda d: None, predict_fn=lambda data, model: data,
        output_fn=lambda prediction, accept: ((f"{x};" for x in prediction), "text/csv")))
    response = client.post("/invocations", json=[1, 2, 3])
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.get_data() == b"1;2;3;"


def test_a_failure_before_the_first_item_is_a_500(tmp_path):
    def predict_fn(data, model):
        raise_now = data[0]
        if raise_now:
            raise ValueError("no")
        yield "never"
    client = make_client(tmp_path, module(model_fn=lambda d: None, predict_fn=predict_fn))
    response = client.post("/invocations", json=[1])
    assert response.status_code == 500 and response.json["stage"] == "predict"
