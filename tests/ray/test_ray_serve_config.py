"""deploy/ray/serve-config.yaml as Ray itself reads it: its schema, and the application its
builder makes."""

from __future__ import annotations

import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serving.config import Config
from serving.hosts.ray import deployment_options
from serving.rayserve import app_builder  # the path the config file names
from tests.server_helpers import REPO


def test_config_file_is_valid_for_serve_deploy(tmp_path):
    text = yaml.safe_load((REPO / "deploy" / "ray" / "serve-config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(text)
    [app] = schema.applications
    assert app.import_path == "serving.rayserve:app_builder" and app.route_prefix == "/"
    assert schema.http_options.port == 8080
    args = {**app.args, "SM_MODEL_DIR": str(tmp_path)}
    assert isinstance(app_builder(args), serve.Application)
    options = deployment_options(Config.load([], environ=args))
    assert options["autoscaling_config"]["min_replicas"] == 2
    assert options["autoscaling_config"]["max_replicas"] == 8
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
