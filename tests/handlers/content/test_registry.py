import importlib.metadata

import pytest

from handlers.content import (
    BUILTIN_HANDLERS,
    ContentHandler,
    PluginError,
    Registry,
    default_registry,
    load_entry_points,
)
from handlers.content.json import JSONHandler


class Upper(ContentHandler):
    media_type = "text/x-upper"

    def decode(self, body):
        return body.decode().upper()

    def encode(self, obj):
        return str(obj).upper().encode()


def test_duplicate_media_type_is_an_error_not_an_overwrite():
    registry = Registry()
    registry.register(JSONHandler())
    with pytest.raises(ValueError, match="already handled by <JSONHandler application/json>"):
        registry.register(JSONHandler())
    mine = JSONHandler()
    registry.register(mine, replace=True)
    assert registry.get("application/json") is mine


@pytest.mark.parametrize("name", ["Text/Plain", "text", "text/plain; charset=utf-8"])
def test_media_types_must_be_bare_lower_case(name):
    handler = Upper()
    handler.media_type = name
    with pytest.raises(ValueError, match="not a bare lower-case media type"):
        Registry().register(handler)


def test_every_builtin_handler_is_registered_under_its_types():
    registry = default_registry()
    assert len(BUILTIN_HANDLERS) == 11
    for media_type in ("application/json", "application/jsonlines", "text/csv",
                       "application/x-npy", "application/x-npz", "image/jpeg", "image/png",
                       "application/x-image", "application/x-recordio-protobuf", "text/plain",
                       "application/octet-stream"):
        assert media_type in registry, media_type


class _EntryPoint:
    def __init__(self, name, obj):
        self.name, self.value, self.dist, self._obj = name, f"tests:{name}", None, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def _fake_entry_points(monkeypatch, *points):
    def entry_points(group=None):
        assert group == "serving.content_handlers"
        return list(points)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_entry_points_add_handlers(monkeypatch):
    _fake_entry_points(monkeypatch, _EntryPoint("upper", Upper))
    registry = Registry()
    assert load_entry_points(registry) == 1
    assert registry.get("text/x-upper").decode(b"abc") == "ABC"


@pytest.mark.parametrize(
    "point, says",
    [
        (_EntryPoint("clash", JSONHandler), "plugin clash (tests:clash): application/json is already"),
        (_EntryPoint("odd", dict), "plugin odd (tests:odd) is a dict, not a ContentHandler"),
        (_EntryPoint("broken", ImportError("no module named avro")),
         "plugin broken (tests:broken) failed to load: ImportError: no module named avro"),
    ],
)
def test_bad_plugins_fail_loudly(monkeypatch, point, says):
    _fake_entry_points(monkeypatch, point)
    registry = Registry()
    registry.register(JSONHandler())
    with pytest.raises(PluginError) as caught:
        load_entry_points(registry)
    assert says in str(caught.value)


def test_user_registered_handler_serves_through_the_pipeline(tmp_path):
    import types

    from serving.config import Config
    from serving.contract.pipeline import Pipeline
    from serving.http.app import create_app

    registry = Registry()
    registry.register(JSONHandler())
    registry.register(Upper())
    mod = types.ModuleType("inference")
    mod.predict_fn = lambda data, model: data + "!"
    config = Config.load(["--model-dir", str(tmp_path)], {})
    pipeline = Pipeline.from_module(mod, registry, model_dir=str(tmp_path),
                                    default_accept="application/json")
    pipeline.load_model()
    client = create_app(config, pipeline).test_client()
    response = client.post("/invocations", data=b"hi", headers={
        "Content-Type": "text/x-upper", "Accept": "text/x-upper"})
    assert response.data == b"HI!" and response.headers["Content-Type"] == "text/x-upper"


def test_a_layer_sees_its_parent_and_keeps_its_own_types_to_itself():
    base = Registry()
    base.register(JSONHandler())
    first, second = base.layer(), base.layer()
    first.register(Upper())
    assert first.get("text/x-upper").decode(b"a") == "A" and "text/x-upper" in first
    assert second.get("text/x-upper") is None and "text/x-upper" not in base
    assert first.media_types == ["application/json", "text/x-upper"]
    # The same type in a sibling layer is no clash; a parent's type needs replace=True,
    # and then shadows it in that layer only.
    second.register(Upper())
    with pytest.raises(ValueError, match="already handled by <JSONHandler"):
        first.register(JSONHandler())
    mine = JSONHandler()
    first.register(mine, replace=True)
    assert first.get("application/json") is mine
    assert second.get("application/json") is base.get("application/json") is not mine
    assert first.media_types == ["application/json", "text/x-upper"]


def test_the_decoded_limit_reaches_handlers_registered_later_in_a_layer():
    base = Registry()
    base.register(JSONHandler())
    base.limit_decoded(1234)
    layer = base.layer()
    layer.register(Upper())
    assert layer.get("text/x-upper").max_decoded_bytes == 1234
    layer.limit_decoded(99)
    assert layer.get("text/x-upper").max_decoded_bytes == 99


def test_register_adds_to_the_registry_of_the_code_running_it():
    from handlers.content import register, registering_into

    layer = default_registry().layer()
    with registering_into(layer):
        assert register(Upper()) is layer
    assert "text/x-upper" in layer and "text/x-upper" not in default_registry()
