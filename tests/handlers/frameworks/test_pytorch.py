"""PyTorch models made here, served by a real ``serve``, compared with torch's own forward pass."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import requests

from tests.server_helpers import every_worker, run_serve, write_model_dir

import torch  # noqa: E402  (in every test environment)
pytestmark = pytest.mark.pytorch

NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 16)
        self.drop = nn.Dropout(0.5)  # must be off when serving: eval() is the handler's job
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.hidden(x))))
"""


@pytest.fixture(scope="module")
def net_module(tmp_path_factory):
    """NET as a real module file: torch.jit.script reads the class's source."""
    import importlib.util

    path = tmp_path_factory.mktemp("net") / "reference_net.py"
    path.write_text(NET)
    spec = importlib.util.spec_from_file_location("reference_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_net(net_module):
    def make():
        torch.manual_seed(0)
        return net_module.Net()

    return make


def reference(net, x: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def ask_json_and_npy(server, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    as_json = requests.post(server.url(), json=x.tolist())
    assert as_json.status_code == 200, as_json.text
    as_npy = requests.post(server.url(), data=npy(x), headers={
        "Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert as_npy.status_code == 200, as_npy.text
    return np.asarray(as_json.json()), np.load(io.BytesIO(as_npy.content))


X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def test_torchscript_model_pt_with_no_user_code(make_net, serve, tmp_path):
    net = make_net().train()  # saved in training mode on purpose
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.save(torch.jit.script(net), str(model_dir / "model.pt"))
    server = serve(model_dir, "--workers", "1")
    from_json, from_npy = ask_json_and_npy(server, X)
    expected = reference(net, X)
    assert from_npy.dtype == np.float32 and np.allclose(from_npy, expected, atol=1e-6)
    assert np.allclose(from_json, expected, atol=1e-5)
    assert "framework: pytorch" in server.log


def test_exported_program_model_pt2(make_net, serve, tmp_path):
    net = make_net().eval()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    program = torch.export.export(net, (torch.randn(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(model_dir / "model.pt2"))
    server = serve(model_dir, "--workers", "1")
    for rows in (X, np.tile(X, (8, 1))):  # any batch size
        from_json, from_npy = ask_json_and_npy(server, rows)
        assert np.allclose(from_npy, reference(net, rows), atol=1e-6)
        assert np.allclose(from_json, reference(net, rows), atol=1e-5)


def _pickled_model_dir(tmp_path):
    """A torch.save(model) pickle whose class lives in the user's code, as users do."""
    model_dir = write_model_dir(tmp_path, "import net  # the class the pickle refers to\n",
                                {"code/net.py": NET})
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", model_dir / "code" / "net.py")
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["net"] = module
    try:
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        net = module.Net()
        torch.save(net, model_dir / "model.pt")
    finally:
        del sys.modules["net"]
    return model_dir, net


def test_pickled_module_is_refused_without_the_opt_in(tmp_path):
    model_dir, _ = _pickled_model_dir(tmp_path)
    result = run_serve("--model-dir", str(model_dir))
    assert result.returncode == 1
    assert "model.pt is not TorchScript: it is a pickle" in result.stderr
    assert "SERVING_TRUST_PICKLED_MODELS=true" in result.stderr


def test_pickled_module_loads_with_the_opt_in(serve, tmp_path):
    model_dir, net = _pickled_model_dir(tmp_path)
    server = serve(model_dir, "--workers", "1", env={"SERVING_TRUST_PICKLED_MODELS": "true"})
    _, from_npy = ask_json_and_npy(server, X)
    assert np.allclose(from_npy, reference(net, X), atol=1e-6)


def test_state_dict_says_model_fn_is_needed(make_net, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save(make_net().state_dict(), model_dir / "model.pth")
    result = run_serve("--model-dir", str(model_dir))
    assert result.returncode == 1
    assert "model.pth holds weights only (a state_dict)" in result.stderr


def test_images_become_normalised_nchw_float_tensors(serve, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.save(torch.jit.script(net), str(model_dir / "model.pt"))
    pixels = np.random.default_rng(1).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    server = serve(model_dir, "--workers", "1")
    answer = requests.post(server.url(), data=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    tensor = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).unsqueeze(0).float() / 255
    with torch.no_grad():
        assert np.allclose(answer.json(), net.eval()(tensor).numpy(), atol=1e-5)


def test_user_model_fn_with_default_predict_and_context_device(make_net, serve, tmp_path):
    model_dir = write_model_dir(tmp_path, """
        import torch
        from net import Net

        def model_fn(model_dir, context):
            torch.manual_seed(0)
            net = Net()
            net.load_state_dict(torch.load(f"{model_dir}/weights.pth", weights_only=True))
            return net.to(context.device)
    """, {"code/net.py": NET})
    net = make_net()
    torch.save(net.state_dict(), model_dir / "weights.pth")
    server = serve(model_dir, "--workers", "1")
    _, from_npy = ask_json_and_npy(server, X)
    assert np.allclose(from_npy, reference(net, X), atol=1e-6)


def test_model_error_is_a_500_that_names_the_framework(make_net, serve, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.save(torch.jit.script(make_net()), str(model_dir / "model.pt"))
    server = serve(model_dir, "--workers", "1")
    wrong = requests.post(server.url(), json=[[1.0, 2.0]])  # 2 features, the model takes 4
    assert wrong.status_code == 500
    assert wrong.json()["message"].startswith("the pytorch model raised")
    assert requests.post(server.url(), json=X.tolist()).status_code == 200


def test_cpu_threads_are_split_between_workers(serve, tmp_path):
    model_dir = write_model_dir(tmp_path, """
        import os
        import torch

        def model_fn(model_dir):
            return None

        def predict_fn(data, model, context):
            return {"pid": os.getpid(), "worker": context.worker_index, "device": context.device,
                    "torch_threads": torch.get_num_threads(),
                    "omp": os.environ.get("OMP_NUM_THREADS"),
                    "mxnet": os.environ.get("MXNET_CPU_WORKER_NTHREADS")}
    """)
    server = serve(model_dir, "--workers", "2")
    seen = {answer["pid"]: answer for answer in (response.json() for response in every_worker(
        lambda: requests.post(server.url(), json=[0], headers={"Connection": "close"})))}
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    for answer in seen.values():
        assert answer["device"] == "cpu"
        assert answer["torch_threads"] == expected
        assert answer["omp"] == answer["mxnet"] == str(expected)
    assert sorted(a["worker"] for a in seen.values()) == [0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_gpu_workers_spread_over_gpus_and_match_the_cpu_answer(make_net, serve, tmp_path):
    net = make_net().eval()
    model_dir = write_model_dir(tmp_path, """
        import os, torch
        def model_fn(model_dir, context):
            model = torch.jit.load(f"{model_dir}/model.pt", map_location=context.device)
            return model
    """)
    torch.jit.save(torch.jit.script(net), str(model_dir / "model.pt"))
    server = serve(model_dir, "--workers", "2", "--device", "cuda")
    devices = set()
    for _ in range(40):
        answer = requests.post(server.url(), data=npy(X), headers={
            "Content-Type": "application/x-npy", "Accept": "application/x-npy",
            "Connection": "close"})
        assert np.allclose(np.load(io.BytesIO(answer.content)), reference(net, X), atol=1e-4)
    for line in server.log.splitlines():
        if "model ready" in line:
            devices.add(line.rsplit("device: ", 1)[1].rstrip(")"))
    count = torch.cuda.device_count()
    assert devices == {f"cuda:{i % count}" for i in range(2)}
