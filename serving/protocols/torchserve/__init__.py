"""TorchServe's surfaces, as one adapter: its inference API (``/predictions/<name>[/<version>]``,
GET, POST or PUT, the body as the handler's request), its management API on a port of its
own (:mod:`~serving.protocols.torchserve.management`), and its token authorization of both
(:mod:`~serving.protocols.torchserve.tokens`). ``config.properties`` is read with the
settings (:mod:`serving.torchserve_config`); an archive's handler runs as the stages of its
pipeline (:mod:`serving.assembly.torchserve_handler`), so ``/predictions`` is an invocation
like any other.
"""

from __future__ import annotations

import typing as t

from flask import Blueprint, Response, request

from serving.contract.models import ModelRepository
from serving.protocols.base import (
    REQUEST_ID_KEY,
    Direct,
    Protocol,
    answer_response,
    serves_archives,
)
from serving.runtime.metrics import count_model_metrics

__all__ = ["OPEN_WITHOUT_KEY", "PREDICTIONS_METHODS", "TorchServe"]

#: The routes the direct path answers, as Flask's rules and the metrics' labels name them.
PREDICTIONS_RULE = "/predictions/<name>"
PREDICTIONS_VERSION_RULE = "/predictions/<name>/<version>"
#: The methods TorchServe's inference API takes on /predictions.
PREDICTIONS_METHODS = ("GET", "POST", "PUT")
#: The main port's routes that need no key under token authorization: TorchServe 0.12
#: answers its API description and its metrics without one.
OPEN_WITHOUT_KEY = frozenset({"/openapi.json", "/metrics"})


class TorchServe(Protocol):
    name = "TorchServe"
    invocation_rules = frozenset({PREDICTIONS_RULE, PREDICTIONS_VERSION_RULE})

    def __init__(self, server: t.Any) -> None:
        super().__init__(server)
        if server.metrics is not None and (serves_archives(server) or server.models.multi):
            count_model_metrics(server.metrics)  # what TorchServe handlers report

    def answer(self, environ: dict[str, t.Any], name: str, version: str | None) -> t.Any:
        """One invocation of ``/predictions``: the body as it came, for the handler."""
        server = self.server
        invocations = server.invocations
        pipeline = invocations.model(name, version)
        negotiated = invocations.negotiate(pipeline, environ.get("CONTENT_TYPE"),
                                           environ.get("HTTP_ACCEPT"))
        return invocations.invoke(pipeline, server.invocation(
            environ, server.body(environ), negotiated.content_type, None), negotiated)

    def direct(self, environ: dict[str, t.Any]) -> Direct | None:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/predictions/") and environ.get("REQUEST_METHOD") in \
                PREDICTIONS_METHODS:
            parts = path[len("/predictions/"):].split("/")
            if len(parts) == 1 and parts[0]:
                return PREDICTIONS_RULE, lambda: self.answer(environ, parts[0], None)
            if len(parts) == 2 and all(parts):
                return PREDICTIONS_VERSION_RULE, lambda: self.answer(environ, *parts)
        return None

    def routes(self) -> Blueprint:
        routes = Blueprint("torchserve", __name__)
        invocations = self.server.invocations

        # Answered by the direct path; the routes are here for 405s, the OpenAPI check and
        # the metrics' labels.
        @routes.route(PREDICTIONS_RULE, methods=list(PREDICTIONS_METHODS))
        @routes.route(PREDICTIONS_VERSION_RULE, methods=list(PREDICTIONS_METHODS))
        def predictions(name: str, version: str | None = None) -> Response:
            environ = request.environ
            return answer_response(self.answer(environ, name, version), invocations,
                                   environ[REQUEST_ID_KEY])

        return routes

    def own_port(self) -> tuple[str, t.Callable[..., t.Iterable[bytes]]] | None:
        config, models = self.server.config, self.server.models
        if config.management_port is None or not isinstance(models, ModelRepository):
            return None
        from serving.protocols.torchserve.management import management_app

        return str(config.management_port), management_app(config, models)

    def guard(self) -> t.Callable[[dict[str, t.Any]], None] | None:
        config = self.server.config
        if not (config.token_auth and config.model_store is not None):
            return None
        # Started as TorchServe is (a model store): its inference API's key, on every
        # route of the main port but the API's description and the metrics.
        from serving.protocols.torchserve.tokens import KeyFile

        keys = KeyFile(config.key_file, config.token_expiration_min)

        def check(environ: dict[str, t.Any]) -> None:
            if environ.get("PATH_INFO", "") not in OPEN_WITHOUT_KEY:
                keys.check(environ.get("HTTP_AUTHORIZATION"), "inference")

        return check
