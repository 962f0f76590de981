"""deploy/: the manifests that run our image at scale, checked against what the server is:
its routes, its port, its settings."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.config import SETTINGS, Config
from tests.container.engine import WRITABLE
from tests.server_helpers import REPO

DEPLOY = REPO / "deploy"
SETTING_VARIABLES = {s.env for s in SETTINGS}
#: Variables of the platforms themselves, not ours.
PLATFORM_VARIABLES = {"STORAGE_URI"}


def get_routes() -> set[str]:
    spec = json.loads((REPO / "serving" / "http" / "openapi.json").read_text())
    return {path for path, operations in spec["paths"].items() if "get" in operations}


def settings_of(variables: dict[str, str], tmp_path: Path) -> Config:
    """The server's settings from these variables (the model directory replaced by an
    existing one): every value must be one the server takes."""
    environ = {**variables, "SM_MODEL_DIR": str(tmp_path)}
    return Config.load([], environ=environ)


@pytest.mark.parametrize("name", ["inferenceservice-pvc.yaml", "inferenceservice-storage-uri.yaml"])
def test_kserve_inference_service(name, tmp_path):
    manifest = yaml.safe_load((DEPLOY / "kserve" / name).read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService" and manifest["metadata"]["name"]
    predictor = manifest["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"]
    assert container.get("args", ["serve"])[0] == "serve"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    routes = get_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/ping" and check["path"] in routes and check["port"] == 8080
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= SETTING_VARIABLES | PLATFORM_VARIABLES, set(env) - SETTING_VARIABLES
    workers = int(env["SAGEMAKER_MODEL_SERVER_WORKERS"])
    assert settings_of(env, tmp_path).workers == workers
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)
    if "STORAGE_URI" in env:  # KServe's storage initializer unpacks into /mnt/models
        assert env["SM_MODEL_DIR"] == "/mnt/models"
    else:  # the claim is mounted where the server reads the model, read-only
        mount = mounts[env.get("SM_MODEL_DIR", "/opt/ml/model")]
        assert mount["readOnly"] and volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    # Run as the image's unprivileged user, on a read-only root: the places the server
    # writes (those the container tests watch) are volumes of their own.
    pod = predictor["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == image_uid()
    assert pod["fsGroup"] == pod["runAsGroup"] == image_uid()
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for place in WRITABLE:
        assert "emptyDir" in volumes[mounts[f"/{place}"]["name"]], place
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def image_uid() -> int:
    """The uid of the image's user `serving`, as the Dockerfile makes it."""
    [uid] = re.findall(r"useradd --uid (\d+)[^;]* serving;", (REPO / "Dockerfile").read_text())
    return int(uid)


def test_ray_serve_config_builds_our_application(tmp_path):
    config = yaml.safe_load((DEPLOY / "ray" / "serve-config.yaml").read_text())
    assert config["http_options"]["port"] == 8080
    [app] = config["applications"]
    assert app["route_prefix"] == "/" and app["import_path"] == "serving.rayserve:app_builder"
    module, _, attribute = app["import_path"].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), attribute))
    assert set(app["args"]) <= SETTING_VARIABLES
    settings = settings_of(app["args"], tmp_path)
    assert settings.ray_replicas == 2 and settings.ray_max_replicas == 8
    # Ray's proxy waits longer than our deadline, so that our 504 comes first.
    assert config["http_options"]["request_timeout_s"] > settings.deadline_seconds


def test_sagemaker_script_dry_run_checks_its_calls_against_the_api(tmp_path):
    python = REPO / ".venv-sdk" / "bin" / "python"
    assert python.exists(), f"{python} is missing: run `make install`"
    result = subprocess.run(
        [str(python), str(DEPLOY / "sagemaker" / "deploy.py"), "--dry-run",
         "--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/serving-toolkit:pytorch",
         "--model-data", "s3://bucket/model.tar.gz",
         "--role-arn", "arn:aws:iam::123456789012:role/SageMakerExecution", "--engine", "ray"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = {c["operation"]: c["parameters"] for c in json.loads(result.stdout)}
    assert list(calls) == ["create_model", "create_endpoint_config", "create_endpoint",
                           "register_scalable_target", "put_scaling_policy"]
    environment = calls["create_model"]["PrimaryContainer"]["Environment"]
    assert set(environment) <= SETTING_VARIABLES
    assert settings_of(environment, tmp_path).engine == "ray"
    [variant] = calls["create_endpoint_config"]["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 2
    target = calls["register_scalable_target"]
    assert target["MinCapacity"] == 2 and target["MaxCapacity"] >= 2
    assert target["ResourceId"] == f"endpoint/{calls['create_endpoint']['EndpointName']}" \
                                   f"/variant/{variant['VariantName']}"
    policy = calls["put_scaling_policy"]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"

    # A parameter the API does not take is caught before anything is sent.
    bad = subprocess.run(
        [str(python), "-c", "import sys; sys.path.insert(0, 'deploy/sagemaker'); import deploy; "
         "deploy.check('sagemaker', 'create_endpoint', {'EndpointName': 'x', 'Bogus': 1})"],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode != 0 and "Bogus" in bad.stderr


def test_kserve_runtime_for_torchserve_archives(tmp_path):
    """The TorchServe replacement: a ClusterServingRuntime speaking v1 and v2, whose serve
    takes the arguments it gives, probed at routes the server has; and an
    InferenceService on it with protocolVersion v2."""
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime-torchserve.yaml").read_text())
    assert runtime["kind"] == "ClusterServingRuntime"
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2", "grpc-v2"}
    [container] = runtime["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve" and args[args.index("--model-store") + 1] == \
        "/mnt/models/model-store"  # KServe's storage initializer unpacks into /mnt/models
    store = tmp_path / "model-store"
    store.mkdir()
    (tmp_path / "config").mkdir()
    # The config.properties of KServe's TorchServe examples, as its storage holds it.
    (tmp_path / "config" / "config.properties").write_text(
        "inference_address=http://0.0.0.0:8085\n"
        "management_address=http://0.0.0.0:8085\n"
        "metrics_address=http://0.0.0.0:8082\n"
        "grpc_inference_port=7070\n"
        "enable_metrics_api=true\n"
        "metrics_format=prometheus\n"
        "number_of_netty_threads=4\n"
        "job_queue_size=10\n"
        "enable_envvars_config=true\n"
        "install_py_dep_per_model=true\n"
        "model_store=/mnt/models/model-store\n"
        'model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":'
        '{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,'
        '"batchSize":1,"maxBatchDelay":10,"responseTimeout":120}}}}\n')
    rewritten = [a.replace("/mnt/models", str(tmp_path)) for a in args[1:]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= SETTING_VARIABLES
    config = Config.load(rewritten, environ=env)
    assert config.model_store == str(store) and config.port == 8080
    # The snapshot's model; the file's addresses give way to the ports KServe expects.
    assert config.models == "mnist=mnist.mar"
    assert config.metrics_port == int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"])
    assert config.management_port == 8085
    # The file opens the management API to 0.0.0.0; the runtime keeps it in the pod.
    assert config.management_host == "127.0.0.1" and not config.enable_model_api
    # The Open Inference Protocol over gRPC on the port the runtime declares.
    assert config.grpc_port in [p["containerPort"] for p in container["ports"]]
    assert config.grpc_port == 8081
    routes = get_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice-torchserve-v2.yaml")
                             .read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in
                                            runtime["spec"]["supportedModelFormats"]}
