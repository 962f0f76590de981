"""The OpenAPI description in the repo against the app's real routes."""

from __future__ import annotations

import json
import re

from handlers.content import default_registry
from serving.config import Config
from serving.contract.models import ModelRepository
from serving.contract.pipeline import Pipeline
from serving.http.app import OPENAPI_PATH, create_app


def app_routes(argv=()) -> dict[str, set[str]]:
    config = Config.load(["--model-dir", "/", *argv], {})
    if config.multi_model:
        models = ModelRepository("/nonexistent", lambda _: None, budget_bytes=1)
    else:
        models = Pipeline({}, default_registry(), model_dir="/", framework=None)
    app = create_app(config, models)
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m for m in rule.methods
                                              if m not in ("HEAD", "OPTIONS"))
    return routes


def described(multi_model: bool) -> dict[str, set[str]]:
    """The routes the description gives a server: x-multi-model operations only to a
    multi-model one."""
    with open(OPENAPI_PATH, encoding="utf-8") as f:
        spec = json.load(f)
    routes = {path: {method.upper() for method, operation in operations.items()
                     if multi_model or not operation.get("x-multi-model")}
              for path, operations in spec["paths"].items()}
    return {path: methods for path, methods in routes.items() if methods}


def test_every_route_is_described_and_nothing_else():
    assert app_routes() == described(multi_model=False)


def test_every_multi_model_route_is_described_and_nothing_else():
    assert app_routes(["--multi-model"]) == described(multi_model=True)


def test_every_operation_documents_its_errors_as_json():
    with open(OPENAPI_PATH, encoding="utf-8") as f:
        spec = json.load(f)
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "type", "message", "request_id"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    if "$ref" in response:
                        assert response["$ref"] == "#/components/responses/Error"
                    else:
                        # KServe's routes answer errors as their protocols define them.
                        expected = ("#/components/schemas/ProtocolError"
                                    if path.startswith(("/v1/", "/v2")) else
                                    "#/components/schemas/Error")
                        assert response["content"]["application/json"]["schema"]["$ref"] \
                            == expected, (path, method, status)


def test_without_metrics_the_route_is_gone():
    assert "/metrics" not in app_routes(["--no-metrics"])
