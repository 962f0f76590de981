"""Choosing the framework handler, without importing any framework."""

import subprocess
import sys
import types

import pytest

from handlers import frameworks
from handlers.frameworks import SelectionError, detect_from_files, framework_of_model
from serving.contract.pipeline import Pipeline
from serving.errors import StartupError


def touch(directory, *names):
    for name in names:
        (directory / name).write_bytes(b"")


def test_files_of_each_framework(tmp_path):
    assert detect_from_files(str(tmp_path)) is None
    touch(tmp_path, "model.pt")
    assert detect_from_files(str(tmp_path)) == "pytorch"
    other = tmp_path / "other"
    other.mkdir()
    touch(other, "resnet-symbol.json", "resnet-0000.params", "resnet-0010.params")
    assert detect_from_files(str(other)) == "mxnet"
    params_only = tmp_path / "params-only"
    params_only.mkdir()
    touch(params_only, "resnet-0000.params", "weights.npz")  # no symbol file: nothing
    assert detect_from_files(str(params_only)) is None


def test_files_of_two_frameworks_are_ambiguous(tmp_path):
    touch(tmp_path, "model.pth", "net-symbol.json", "net-0001.params")
    with pytest.raises(SelectionError) as caught:
        detect_from_files(str(tmp_path))
    message = str(caught.value)
    assert "model.pth (pytorch)" in message and "net-symbol.json + net-0001.params (mxnet)" in message
    assert "set SERVING_FRAMEWORK" in message


def test_deciding_imports_no_framework(tmp_path):
    touch(tmp_path, "model.pt")
    probe = (
        "import sys\n"
        "from handlers.frameworks import detect_from_files, framework_of_model\n"
        f"assert detect_from_files({str(tmp_path)!r}) == 'pytorch'\n"
        "assert framework_of_model(object()) is None\n"
        "print(sorted(m for m in ('torch', 'mxnet', 'chainer') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def _fake(module_name):
    base = type("Base", (), {"__module__": module_name})
    return type("UserNet", (base,), {"__module__": "inference"})()


@pytest.mark.parametrize("module, name", [
    ("torch.nn.modules.module", "pytorch"), ("chainer.link", "chainer"),
    ("mxnet.gluon.block", "mxnet"), ("sklearn.linear_model", None), ("builtins", None),
])
def test_framework_of_a_model_from_its_class_hierarchy(module, name):
    assert framework_of_model(_fake(module)) == name


def test_nothing_to_serve_names_what_to_do(tmp_path):
    with pytest.raises(StartupError) as caught:
        Pipeline.from_module(None, None, model_dir=str(tmp_path), default_accept="application/json")
    assert "model.pt, model.pt2" in str(caught.value) and "SERVING_FRAMEWORK" in str(caught.value)


def test_ambiguous_files_stop_startup(tmp_path):
    touch(tmp_path, "model.pt", "net-symbol.json", "net-0001.params")
    mod = types.ModuleType("inference")
    with pytest.raises(StartupError, match="several frameworks"):
        Pipeline.from_module(mod, None, model_dir=str(tmp_path), default_accept="application/json")


def test_every_framework_is_a_handler_class_named_as_registered():
    from handlers.frameworks.base import FrameworkHandler
    from serving.config import SETTINGS

    assert {"pytorch", "chainer", "mxnet"} <= set(frameworks.FRAMEWORKS)
    choices = next(s for s in SETTINGS if s.name == "framework")
    for name in frameworks.FRAMEWORKS:
        handler = frameworks._handler_class(name)  # imports no framework
        assert issubclass(handler, FrameworkHandler) and handler.name == name
        assert handler.package  # how its models are recognised
        assert choices.parse(name) == name  # --framework takes it


def test_framework_none_calls_the_model_as_a_function(tmp_path):
    from handlers.content import default_registry

    torch_like = _fake("torch.nn.modules.module")
    torch_like.__class__.__call__ = lambda self, data: data * 2
    mod = types.ModuleType("inference")
    mod.model_fn = lambda model_dir: torch_like
    pipeline = Pipeline.from_module(mod, default_registry(), model_dir=str(tmp_path),
                                    default_accept="application/json", framework="none")
    pipeline.load_model()
    assert pipeline.framework is None  # not chosen from the model's type
    from serving.contract.negotiation import negotiate

    negotiated = negotiate(None, None, pipeline.decoders, pipeline.encoders, "application/json")
    body, _ = pipeline.invoke(b"[1, 2]", negotiated, {})
    assert body == b"[2,4]"
