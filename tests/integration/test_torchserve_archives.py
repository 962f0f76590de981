"""TorchServe model archives served by ``serve``, without TorchServe itself (that is
tests/torchserve): a .mar or an unpacked archive as --model-dir, a model store of
archives whose modules share names, and archives that must not be served."""

from __future__ import annotations

import re
import textwrap
import zipfile

import pytest
import requests

from tests.server_helpers import free_port, run_serve
from tests.torchserve.archives import handler_source, write_archive

pytestmark = [pytest.mark.torchserve, pytest.mark.pytorch]


@pytest.fixture
def serve(serve, tmp_path):
    """The suite's serve, unpacking archives under tmp_path (the fixture kills servers,
    which then cannot remove what they unpacked)."""
    (tmp_path / "tmp").mkdir()

    def start(model_dir, *args, **kwargs):
        env = {"TMPDIR": str(tmp_path / "tmp"), **(kwargs.pop("env", None) or {})}
        return serve(model_dir, *args, env=env, **kwargs)

    return start

ECHO = textwrap.dedent('''
    def handle(data, context):
        if data is None:
            return None
        return [{"model": context.model_name, "body": row.get("body")} for row in data]
''').encode()


def test_one_archive_as_the_model_dir(serve, tmp_path):
    mar = write_archive(tmp_path / "echo.mar", "echo", {"echo.py": ECHO}, version="3.1",
                        handler="echo.py")
    server = serve(mar)
    assert requests.get(server.url("/ping"), timeout=10).json() == {"status": "Healthy"}
    by_name = requests.post(server.url("/predictions/echo"), json={"x": 1}, timeout=10)
    assert by_name.status_code == 200
    assert by_name.json() == {"model": "echo", "body": {"x": 1}}
    versioned = requests.post(server.url("/predictions/echo/3.1"), json=[1], timeout=10)
    assert versioned.json() == {"model": "echo", "body": [1]}
    # The SageMaker contract on the same server: /invocations is the archive's handler.
    sagemaker = requests.post(server.url("/invocations"), json={"y": 2}, timeout=10)
    assert sagemaker.json() == {"model": "echo", "body": {"y": 2}}
    described = requests.get(server.url("/models/echo"), timeout=10).json()
    assert described["modelVersion"] == "3.1"
    wrong = requests.post(server.url("/predictions/echo/9"), json={}, timeout=10)
    assert wrong.status_code == 404 and wrong.json()["code"] == 404


def test_an_unpacked_archive_as_the_model_dir(serve, tmp_path):
    mar = write_archive(tmp_path / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(unpacked)
    server = serve(unpacked)
    answer = requests.post(server.url("/predictions/echo"), data=b"\x01", timeout=10)
    assert answer.status_code == 500  # bytes in its answer cannot be written as JSON
    assert "cannot be written as JSON" in answer.json()["message"]
    text = requests.post(server.url("/predictions/echo"), data="hi",
                         headers={"Content-Type": "text/plain"}, timeout=10)
    assert text.json() == {"model": "echo", "body": "hi"}


def _isolated_archive(tmp_path, name: str, weight: float):
    """An archive whose handler.py imports helper.py and whose model.py BaseHandler
    imports by name: the same file names in every archive, different contents."""
    import torch

    model_py = textwrap.dedent(f'''
        import torch

        class Scale{name.title()}(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x):
                return x * self.w
    ''')
    namespace: dict = {}
    exec(model_py, namespace)
    model = namespace[f"Scale{name.title()}"]()
    with torch.no_grad():
        model.w.fill_(weight)
    state = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), state)
    handler = textwrap.dedent('''
        import torch
        import helper
        from ts.torch_handler.base_handler import BaseHandler

        class Handler(BaseHandler):
            def preprocess(self, data):
                return torch.tensor([float(row["body"]["x"]) for row in data])

            def postprocess(self, data):
                return [{"helper": helper.NAME, "y": float(y),
                         "class": type(self.model).__name__} for y in data]
    ''')
    return write_archive(
        tmp_path / "store" / f"{name}.mar", name,
        {"handler.py": handler.encode(), "model.py": model_py.encode(),
         "helper.py": f"NAME = {name!r}\n".encode(), "state.pt": state.read_bytes()},
        handler="handler.py", modelFile="model.py", serializedFile="state.pt")


def test_a_model_store_keeps_each_archives_modules_its_own(serve, tmp_path):
    (tmp_path / "store").mkdir()
    _isolated_archive(tmp_path, "double", 2.0)
    _isolated_archive(tmp_path, "triple", 3.0)
    store = tmp_path / "store"
    server = serve(store, "--model-store", str(store), "--workers", "2", "--disable-token-auth")
    for name, y in (("double", 6.0), ("triple", 9.0), ("double", 6.0)):
        answer = requests.post(server.url(f"/predictions/{name}"), json={"x": 3}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"helper": name, "y": y, "class": f"Scale{name.title()}"}
    listing = requests.get(server.url("/models"), timeout=10).json()
    assert sorted(m["modelName"] for m in listing["models"]) == ["double", "triple"]
    # BaseHandler's own metric (context.metrics.add_time) lands in /metrics.
    exposition = requests.get(server.url("/metrics"), timeout=10).text
    counts = re.findall(r'serving_handler_metric_count\{metric="HandlerTime",model="double",'
                        r'type="GAUGE",unit="([^"]+)"\} (\d+)', exposition)
    assert counts and int(float(counts[0][1])) >= 2, exposition[-2000:]
    # /invocations needs to know which: several archives, none is the default.
    plain = requests.post(server.url("/invocations"), json={"x": 1}, timeout=10)
    assert plain.status_code == 404 and "/predictions/<name>" in plain.json()["message"]


def test_models_names_and_picks_archives(serve, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    write_archive(store / "other.mar", "other", {"echo.py": ECHO}, handler="echo.py")
    server = serve(store, "--model-store", str(store), "--models", "renamed=echo.mar",
                   "--disable-token-auth")
    assert requests.post(server.url("/predictions/renamed"), json=1,
                         timeout=10).json()["body"] == 1
    assert requests.post(server.url("/predictions/other"), json=1,
                         timeout=10).status_code == 404
    # One archive: it is also what /invocations answers with.
    assert requests.post(server.url("/invocations"), json=2, timeout=10).json()["body"] == 2


def test_a_bad_form_body_is_a_400(serve, tmp_path):
    server = serve(write_archive(tmp_path / "echo.mar", "echo", {"echo.py": ECHO},
                                 handler="echo.py"))
    for headers, body in (({"Content-Type": "multipart/form-data; boundary=xx"}, b"junk"),
                          ({"Content-Type": "multipart/form-data"}, b"--xx--"),
                          ({"Content-Type": "multipart/form-data; boundary=xx"},
                           b"--xx\r\nContent-Disposition: form-data; name=a\r\n\r\nno end")):
        answer = requests.post(server.url("/predictions/echo"), data=body, headers=headers,
                               timeout=10)
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"] == "BadRequest"
    assert requests.post(server.url("/predictions/echo"), json=1, timeout=10).status_code == 200


@pytest.mark.parametrize("case", ["not a zip", "no manifest", "outside", "no handler",
                                  "unknown built-in", "initialize raises", "two classes",
                                  "missing from store"])
def test_archives_that_cannot_be_served_stop_serve_with_the_reason(tmp_path, case):
    mar = tmp_path / "bad.mar"
    args = ["--model-dir", str(mar)]
    if case == "not a zip":
        mar.write_bytes(b"PK\x03\x04 not really")
        reason = "not a readable zip archive"
    elif case == "no manifest":
        with zipfile.ZipFile(mar, "w") as archive:
            archive.writestr("handler.py", ECHO)
        reason = "no MAR-INF/MANIFEST.json"
    elif case == "outside":
        write_archive(mar, "bad", {"echo.py": ECHO}, handler="../../etc/echo.py")
        reason = "points outside the archive"
    elif case == "no handler":
        write_archive(mar, "bad", {"echo.py": ECHO})
        reason = "names no handler"
    elif case == "unknown built-in":
        write_archive(mar, "bad", {"echo.py": ECHO}, handler="no_such_handler")
        reason = "neither a file of the archive nor one of TorchServe's built-in handlers"
    elif case == "initialize raises":
        source = b"class H:\n    def initialize(self, context):\n        raise OSError('weights?')\n" \
                 b"    def handle(self, data, context):\n        return data\n"
        write_archive(mar, "bad", {"h.py": source}, handler="h.py")
        reason = "OSError: weights?"
    elif case == "two classes":
        source = b"class A:\n    def handle(self, d, c): pass\nclass B:\n    pass\n"
        write_archive(mar, "bad", {"h.py": source}, handler="h.py")
        reason = "Expected only one class"
    else:
        (tmp_path / "store").mkdir()
        args = ["--model-store", str(tmp_path / "store"), "--models", "a=missing.mar"]
        reason = "missing.mar is not a model archive"
    done = run_serve(*args, "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "1",
                     timeout=120)
    assert done.returncode != 0
    assert reason in done.stderr + done.stdout, done.stderr[-3000:]
    if case != "initialize raises":  # the handler's own failure is logged with its traceback
        assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_the_management_api_loads_and_unloads_archives(serve, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    write_archive(store / "echo.mar", "echo", {"echo.py": ECHO}, version="1.2",
                  handler="echo.py")
    raising = b"class H:\n    def initialize(self, context):\n        raise OSError('no weights')\n" \
              b"    def handle(self, data, context):\n        return data\n"
    write_archive(store / "broken.mar", "broken", {"h.py": raising}, handler="h.py")
    port = free_port()
    server = serve(store, "--model-store", str(store), "--models", "none", "--workers", "2",
                   "--management-port", str(port), "--disable-token-auth",
                   "--enable-model-api")
    manage = f"http://127.0.0.1:{port}"
    assert requests.get(f"{manage}/models", timeout=10).json() == {"models": []}
    loaded = requests.post(f"{manage}/models?url=echo.mar&model_name=e1", timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["status"] == 'Model "e1" Version: 1.2 registered with 2 initial workers'
    # Every worker answers for it (new connections, so both get turns).
    for _ in range(6):
        answer = requests.post(server.url("/predictions/e1"), json=[1],
                               headers={"Connection": "close"}, timeout=10)
        assert answer.json() == {"model": "e1", "body": [1]}
    (described,) = requests.get(f"{manage}/models/e1", timeout=10).json()
    assert described["modelVersion"] == "1.2" and described["modelUrl"] == "echo.mar"
    # A handler that fails in initialize: not served, the reason in the answer.
    broken = requests.post(f"{manage}/models?url=broken.mar", timeout=60)
    assert broken.status_code == 500 and broken.json()["exception"] == "OSError"
    assert requests.post(server.url("/predictions/broken"), json=1,
                         timeout=10).status_code == 404
    for url, status, why in (("../echo.mar", 404, "Relative path is not allowed"),
                             ("http://example.com/x.mar", 400, "only local archives"),
                             ("missing.mar", 404, "Model not found at: missing.mar")):
        refused = requests.post(f"{manage}/models", params={"url": url}, timeout=10)
        assert refused.status_code == status and why in refused.json()["message"]
    refused = requests.post(f"{manage}/models?url=echo.mar&model_name=e2&batch_size=8",
                            timeout=10)
    assert refused.status_code == 400 and "config YAML" in refused.json()["message"]
    # The management port answers nothing else, the main port no management call.
    assert requests.post(f"{manage}/predictions/e1", json=1, timeout=10).status_code == 404
    assert requests.get(server.url("/models/e1"), timeout=10).json()["modelName"] == "e1"
    gone = requests.delete(f"{manage}/models/e1", timeout=30)
    assert gone.json() == {"status": 'Model "e1" unregistered'}
    assert requests.post(server.url("/predictions/e1"), json=1, timeout=10).status_code == 404
    # Its unpacked files went with it; loaded again, it comes back.
    assert list((tmp_path / "tmp").glob("serving-archives-*/echo-*")) == []
    again = requests.post(f"{manage}/models?url=echo.mar&model_name=e1", timeout=60)
    assert again.status_code == 200


def test_a_sagemaker_multi_model_endpoint_loads_a_mar(serve, tmp_path):
    mar = write_archive(tmp_path / "echo.mar", "echo", {"echo.py": ECHO}, handler="echo.py")
    server = serve(tmp_path / "none", "--multi-model", "--workers", "2",
                   "--multi-model-root", str(tmp_path))
    loaded = requests.post(server.url("/models"), json={"model_name": "m1", "url": str(mar)},
                           timeout=60)
    assert loaded.status_code == 200, loaded.text
    answer = requests.post(server.url("/models/m1/invoke"), json={"q": 1}, timeout=10)
    assert answer.json() == {"model": "m1", "body": {"q": 1}}
    assert requests.post(server.url("/predictions/m1"), json=2, timeout=10).json()["body"] == 2
    assert requests.get(server.url("/models/m1"), timeout=10).json()["modelUrl"] == str(mar)
