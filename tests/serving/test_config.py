import argparse
import shutil
import tempfile
from pathlib import Path

import pytest

from serving.config import SETTINGS, Config, ConfigError, build_parser, settings_table


@pytest.fixture
def model_dir(tmp_path):
    return str(tmp_path)


def load(model_dir, argv=(), env=None):
    return Config.load(["--model-dir", model_dir, *argv], env or {})


def test_every_default_validates(tmp_path):
    # Each declared default must be a value its own parser accepts unchanged.
    for setting in SETTINGS:
        default = setting.default_value()
        if default is None:
            continue
        text = ("true" if default else "false") if isinstance(default, bool) else str(default)
        assert setting.parse(text) == default, setting.name


def test_defaults(model_dir):
    config = load(model_dir)
    assert (config.port, config.timeout, config.default_accept) == (8080, 60, "application/json")
    assert config.max_payload_bytes == 6 * 2**20
    assert config.log_level == 20 and config.preload and config.install_requirements
    assert config.workers >= 1 and config.program is None
    assert config.sources["port"] == "default"


def test_flag_beats_env_beats_default(model_dir):
    env = {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3"}
    config = load(model_dir, ["--port", "9001"], env)
    assert config.port == 9001 and config.sources["port"] == "flag"
    assert config.workers == 3 and config.sources["workers"] == "env"
    assert config.where("workers") == "SAGEMAKER_MODEL_SERVER_WORKERS"


def test_env_names_of_the_hosting_contract(tmp_path):
    env = {
        "SM_MODEL_DIR": str(tmp_path),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/x-npy",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "WARNING",
        "SAGEMAKER_PROGRAM": "serve_me.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": str(tmp_path),
        "SERVING_PRELOAD": "false",
        "SERVING_INSTALL_REQUIREMENTS": "0",
    }
    config = Config.load([], env)
    assert config.model_dir == str(tmp_path)
    assert config.timeout == 120 and config.max_payload_bytes == 100 * 2**20
    assert config.default_accept == "application/x-npy" and config.log_level == 30
    assert config.program == "serve_me.py" and config.submit_dir == str(tmp_path)
    assert not config.preload and not config.install_requirements


def test_switch_flags(model_dir):
    assert not load(model_dir, ["--no-preload"], {"SERVING_PRELOAD": "true"}).preload
    assert load(model_dir, ["--preload"], {"SERVING_PRELOAD": "false"}).preload


def test_default_accept_drops_parameters(model_dir):
    config = load(model_dir, env={"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "Application/JSON; q=1"})
    assert config.default_accept == "application/json"


@pytest.mark.parametrize(
    "argv, env, says",
    [
        ([], {"SAGEMAKER_BIND_TO_PORT": "abc"}, "SAGEMAKER_BIND_TO_PORT='abc': not an integer"),
        (["--port", "70000"], {}, "--port='70000': must be 1-65535"),
        ([], {"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "must be 1 or more"),
        (["--threads", "-2"], {}, "--threads='-2': must be 1 or more"),
        ([], {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, "must be more than 0"),
        ([], {"SAGEMAKER_CONTAINER_LOG_LEVEL": "LOUD"}, "not a log level"),
        ([], {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "json"}, "not a media type"),
        ([], {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "*/*"}, "not a wildcard"),
        ([], {"SERVING_PRELOAD": "maybe"}, "not a boolean"),
        ([], {"SERVING_ENGINE": "uvicorn"}, "SERVING_ENGINE='uvicorn'"),
        (["--ray-num-cpus", "0"], {}, "must be more than 0"),
        ([], {"SERVING_RAY_NUM_GPUS": "-1"}, "must be 0 or more"),
        (["--ray-replicas", "4", "--ray-max-replicas", "2"], {},
         "--ray-max-replicas=2 is fewer than the 4 replicas"),
        (["--engine", "ray", "--multi-model"], {}, "multi-model endpoints (each process must hold the models it was asked to load, and the others too): only on the gunicorn engine, not on the ray engine"),
        (["--engine", "ray", "--metrics-port", "9100"], {}, "--metrics-port: /metrics on a port of its own: only on the gunicorn engine"),
        ([], {"SAGEMAKER_SAFE_PORT_RANGE": "9000"}, "not a port range XXXX-YYYY"),
        ([], {"SAGEMAKER_SAFE_PORT_RANGE": "9100-9000"}, "the first no more than the last"),
        (["--metrics-port", "9100"], {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999"},
         "--metrics-port=9100 is outside SAGEMAKER_SAFE_PORT_RANGE=10000-10999"),
        (["--engine", "ray"], {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999"},
         "the ray engine's local instance listens on ports of its own"),
        ([], {"SERVING_RUN_AS": "nobody"}, "SERVING_RUN_AS='nobody': must be one of serving"),
        (["--engine", "ray", "--grpc-port", "8081"], {},
         "--grpc-port: the Open Inference Protocol over gRPC: only on the gunicorn engine"),
        (["--grpc-port", "8080"], {}, "--grpc-port=8080 is taken by another of the server's"),
        (["--grpc-port", "8081"], {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999"},
         "--grpc-port=8081 is outside SAGEMAKER_SAFE_PORT_RANGE"),
        (["--model-version", "1/2"], {}, "must be one path segment"),
    ],
)
def test_bad_values_name_the_setting(model_dir, argv, env, says):
    with pytest.raises(ConfigError) as caught:
        load(model_dir, argv, env)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_safe_port_range_and_metrics_port_auto(model_dir):
    config = load(model_dir, ["--metrics-port", "auto"], {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999"})
    assert config.metrics_port == 0 and config.safe_port_range == (10000, 10999)
    assert load(model_dir, ["--metrics-port", "10999"],
                {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999"}).metrics_port == 10999
    # A cluster elsewhere opens no port here: the ray engine may join one.
    assert load(model_dir, ["--engine", "ray"], {"SAGEMAKER_SAFE_PORT_RANGE": "10000-10999",
                                                 "RAY_ADDRESS": "10.0.0.5:6379"}).engine == "ray"
    assert load(model_dir).run_as == "serving"
    assert load(model_dir, env={"SERVING_RUN_AS": "root"}).run_as == "root"


def load_as(uid: int, argv: list[str]) -> str:
    """Config.load in a child process that runs as ``uid`` (this one must be root): the
    ConfigError's message, or "loaded"."""
    import os

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                Config.load(argv, {})
                message = "loaded"
            except ConfigError as exc:
                message = str(exc)
            except Exception as exc:  # shown by the test's assertion
                message = f"unexpected {type(exc).__name__}: {exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        message = answer.read()
    os.waitpid(child, 0)
    return message


@pytest.mark.skipif(__import__("os").getuid() != 0, reason="needs root to act as another uid")
def test_unreadable_model_is_refused_naming_path_owner_mode_and_the_way_out(tmp_path):
    import os

    tmp_path.chmod(0o755)
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    # pytest's own directories are root's, mode 0700: named, not "does not exist".
    says = load_as(65534, ["--model-dir", str(model)])
    assert "is not readable by uid 65534" in says and "mode 0700" in says, says
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))
    tmp_path.chmod(0o755)
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"x")
    for path in (model, model / "code"):
        path.chmod(0o755)
    (model / "weights.bin").chmod(0o644)
    assert load_as(65534, ["--model-dir", str(model)]) == "loaded"
    (model / "weights.bin").chmod(0o600)  # one file only its owner may read
    says = load_as(65534, ["--model-dir", str(model)])
    assert says.startswith(f"the file {model}/weights.bin is not readable by uid 65534"), says
    assert "owned by uid 0 (root), gid 0 (root), mode 0600" in says
    assert "SERVING_RUN_AS=root" in says and "fsGroup" in says and "[model directory from --model-dir]" in says
    model.chmod(0o700)  # the whole directory, as a root-only model.tar.gz unpacks
    says = load_as(65534, ["--model-dir", str(model)])
    assert says.startswith(f"the model directory {model} is not readable"), says
    assert "mode 0700" in says and "\n" not in says
    assert load_as(0, ["--model-dir", str(model)]) == "loaded"  # root reads anything
    shutil.rmtree(tmp_path)


def test_missing_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(["--model-dir", str(tmp_path / "nope")], {})


def test_help_documents_every_setting_and_its_variable():
    text = build_parser().format_help()
    for setting in SETTINGS:
        assert setting.flag in text and setting.env in text


def test_settings_table_is_generated():
    # Regenerate with `python -m serving.config --write docs/reference/settings.md` if this
    # fails.
    import pathlib

    from serving.config import TABLE_END, TABLE_START

    readme = (pathlib.Path(__file__).parents[2] / "docs" / "reference" / "settings.md").read_text()
    assert f"{TABLE_START}\n{settings_table()}\n{TABLE_END}" in readme
    assert readme.count("<!-- options table") == 1, "a second, stale table"


def test_unknown_flag_exits_like_argparse(model_dir):
    with pytest.raises(SystemExit):
        load(model_dir, ["--no-such-flag"])
    assert isinstance(build_parser(), argparse.ArgumentParser)


def test_ray_engine_settings(model_dir):
    config = load(model_dir, [], {"SERVING_ENGINE": "ray", "RAY_ADDRESS": "10.0.0.5:6379",
                                  "SERVING_RAY_REPLICAS": "3", "SERVING_RAY_NUM_GPUS": "0.5"})
    assert (config.engine, config.ray_address, config.ray_replicas) == ("ray", "10.0.0.5:6379", 3)
    assert config.ray_num_gpus == 0.5 and config.ray_max_replicas is None
    defaults = load(model_dir)
    assert (defaults.engine, defaults.ray_address, defaults.ray_num_cpus) == ("gunicorn", None, 1)
