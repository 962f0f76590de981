"""TorchServe's management API, on a port of its own (``--management-port``), mapped
onto our model repository (:class:`~serving.contract.models.ModelRepository`): what is
registered here is loaded in every worker, as ``POST /models`` of the multi-model
contract loads it, and answered at ``/predictions/<name>`` on the main port.

The calls scripts make, in TorchServe 0.12's shapes:

- ``GET /models[?limit=N&next_page_token=T]``: ``{"models": [{"modelName", "modelUrl"}],
  "nextPageToken"}``;
- ``GET /models/<name>[/<version>|/all]``: a list of one description (``modelName``,
  ``modelVersion``, ``modelUrl``, ``runtime``, ``minWorkers``, ``maxWorkers``,
  ``batchSize``, ``maxBatchDelay``, ``responseTimeout``, ``loadedAtStartup``, and
  ``workers``: the answering worker, as a management call reaches one of them);
- ``POST /models?url=<file.mar in the store, or a path>[&model_name=N]``: registered and
  loaded, ``{"status": "Model \\"N\\" Version: V registered with W initial workers"}``;
  ``initial_workers`` and ``synchronous`` are taken and change nothing (every worker
  serves every model, and a load answers once it is done); ``batch_size``,
  ``max_batch_delay`` and ``response_timeout`` are refused (400): an archive batches
  as its config YAML says;
- ``DELETE /models/<name>[/<version>]``: ``{"status": "Model \\"N\\" unregistered"}``.

Errors are our JSON, which is TorchServe's shape (``code``, ``type``, ``message``).
"""

from __future__ import annotations

import os
import typing as t
from urllib.parse import urlparse

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serving import errors
from serving.assembly.build import archive_batching
from serving.assembly.mar import archive_settings, read_manifest
from serving.config import Config
from serving.contract.models import PAGE_SIZE, MAX_PAGE_SIZE, ModelRepository, valid_model_name

__all__ = ["management_app"]

#: Query parameters of TorchServe's register call that change nothing here.
_TAKEN = {"url", "model_name", "initial_workers", "synchronous"}
#: ... and those that would change a model's batching or deadline: refused.
_REFUSED = {"batch_size", "max_batch_delay", "response_timeout"}


def management_app(config: Config, repository: ModelRepository) -> Flask:
    app = Flask("serving.management", static_folder=None)
    app.json.sort_keys = False
    store = config.model_store

    @app.errorhandler(errors.ServingError)
    def on_error(error: errors.ServingError) -> Response:
        response = app.json.response(error.to_dict())
        response.status_code = error.status_code
        return response

    @app.errorhandler(HTTPException)
    def on_http(error: HTTPException) -> Response:
        code = error.code or 500
        kind = errors.ClientError if 400 <= code < 500 else errors.ServingError
        message = (f"no route {request.method} {request.path}" if code == 404
                   else error.description)
        return on_error(kind(message, status_code=code))

    def manifest_of(name: str) -> t.Any:
        return read_manifest(repository.entry(name).url)

    def described(name: str) -> dict[str, t.Any]:
        entry = repository.entry(name)
        manifest = read_manifest(entry.url)
        size, delay = archive_batching(config,
                                       archive_settings(config, name, entry.url, manifest))
        return {
            "modelName": name, "modelVersion": manifest.version,
            "modelUrl": entry.source or entry.url,
            "runtime": manifest.raw.get("runtime", "python"),
            "minWorkers": config.workers, "maxWorkers": config.workers,
            "batchSize": size, "maxBatchDelay": delay,
            "responseTimeout": config.deadline_seconds,
            "loadedAtStartup": name in repository.startup,
            "workers": [{"id": str(os.getpid()), "pid": os.getpid(),
                         "status": "READY" if repository.held(name) else "UNLOADED"}],
        }

    def check_version(name: str, version: str | None) -> None:
        if version not in (None, "all") and manifest_of(name).version != version:
            raise errors.NotFound(f"model {name} has no version {version}")

    @app.get("/models")
    def list_models() -> Response:
        try:
            size = int(request.args.get("limit", PAGE_SIZE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise errors.BadRequest(f"limit must be 1-{MAX_PAGE_SIZE}")
        return app.json.response(repository.page(request.args.get("next_page_token"), size))

    @app.get("/models/<name>")
    @app.get("/models/<name>/<version>")
    def describe_model(name: str, version: str | None = None) -> Response:
        check_version(name, version)
        return app.json.response([described(name)])

    @app.post("/models")
    def register_model() -> Response:
        args = request.args
        refused = sorted(_REFUSED & args.keys())
        if refused:
            raise errors.BadRequest(f"{', '.join(refused)}: an archive's batching and deadline "
                                    f"come from its config YAML (batchSize, maxBatchDelay, "
                                    f"responseTimeout) and the server's settings")
        unknown = sorted(args.keys() - _TAKEN - _REFUSED)
        if unknown:
            raise errors.BadRequest(f"unknown parameter(s): {', '.join(unknown)}")
        url = args.get("url")
        if not url:
            raise errors.BadRequest("url is required: a .mar of the model store, or a path")
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise errors.BadRequest(f"url {url}: only local archives can be registered "
                                    f"(nothing is downloaded)")
        path = parsed.path if parsed.scheme == "file" else url
        if not os.path.isabs(path):
            if store is None or os.path.normpath(path).startswith(".."):
                raise errors.BadRequest(f"url {url} is not an archive of the model store")
            path = os.path.join(store, path)
        if not os.path.exists(path):
            raise errors.BadRequest(f"url {url}: no such archive")
        name = args.get("model_name")
        if name is None:
            name = _name_in(path, repository)
        if not valid_model_name(name):
            raise errors.BadRequest("model_name must be 1-255 characters: letters, digits and "
                                    "._+=- (not starting with one of those)")
        entry = repository.load(name, path, source=url)
        version = read_manifest(entry.url).version
        return app.json.response({"status": f'Model "{name}" Version: {version} registered '
                                            f"with {config.workers} initial workers"})

    @app.delete("/models/<name>")
    @app.delete("/models/<name>/<version>")
    def unregister_model(name: str, version: str | None = None) -> Response:
        check_version(name, version)
        repository.unload(name)  # a .mar this server unpacked: its files go with it
        return app.json.response({"status": f'Model "{name}" unregistered'})

    return app


def _name_in(path: str, repository: ModelRepository) -> str:
    """The model name an archive's manifest gives (TorchServe's default)."""
    from serving.assembly.mar import ArchiveError

    try:
        return read_manifest(path).model_name
    except ArchiveError as exc:
        raise errors.BadRequest(str(exc)) from None
