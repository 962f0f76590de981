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

Who may do what, closed by default as TorchServe 0.12 closes it (docs/operating.md,
"Security"):

- it listens on 127.0.0.1 unless an address is named for it (``--management-host``,
  ``management_address``);
- every call needs the management key (:mod:`serving.protocols.torchserve.tokens`)
  unless token authorization is off; ``GET /token?type=...`` takes the API key;
- registering and unregistering are TorchServe's 405 unless ``--enable-model-api``
  (``enable_model_api=true``);
- a url registers only from the model store or what ``--allowed-urls`` allows, judged
  on its real path (symlinks followed): TorchServe's 404s otherwise;
- a call that would change the models is refused (403) when it comes from a browser on
  another site: it carries an ``Origin`` or a cross-site ``Sec-Fetch-Site``, or a body
  type an HTML form can send, which no script of TorchServe's users sends; while it
  listens on loopback, a request naming another host (a DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing as t
from urllib.parse import urlparse

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serving import errors
from serving.assembly.build import archive_batching
from serving.assembly.mar import archive_settings, read_manifest
from serving.config import Config
from serving.contract.models import PAGE_SIZE, MAX_PAGE_SIZE, ModelRepository, valid_model_name
from serving.protocols.torchserve.tokens import KINDS, KeyFile

__all__ = ["Management", "management_app"]

#: Query parameters of TorchServe's register call that change nothing here.
_TAKEN = {"url", "model_name", "initial_workers", "synchronous"}
#: ... and those that would change a model's batching or deadline: refused.
_REFUSED = {"batch_size", "max_batch_delay", "response_timeout"}


#: Body types an HTML form (or a no-CORS fetch) can send across sites.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_CHANGES = ("POST", "PUT", "PATCH", "DELETE")


class MethodNotAllowedException(errors.ClientError):
    """TorchServe's answer to registering or unregistering while the model API is off."""

    status_code = 405


class ModelNotFoundException(errors.ClientError):
    """TorchServe's answer to a url it will not register from."""

    status_code = 404


class CrossSiteRequest(errors.ClientError):
    """403: a request a web page on another site could have made (:func:`cross_site`)."""

    status_code = 403


def _loopback(host: str) -> bool:
    return host == "localhost" or (_ip_literal(host) and
                                   ipaddress.ip_address(host.strip("[]")).is_loopback)


def _host_of(header: str) -> str:
    """The host of a Host header, without its port."""
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def cross_site(environ: dict[str, t.Any], bound_to_loopback: bool) -> str | None:
    """Why a management request may come from a web page on another site, or None.

    A browser adds ``Origin`` (and ``Sec-Fetch-Site``) to every cross-site POST and sends
    a form's body as one of :data:`_FORM_TYPES`; the scripts and clients of this API
    send none of these, its calls taking query parameters only. On a loopback-bound
    port, a ``Host`` that names anything but an address or ``localhost`` is a page whose
    name was rebound to 127.0.0.1 (DNS rebinding), which the same-origin rule lets read
    the answers: refused on every call.
    """
    if bound_to_loopback:
        host = _host_of(environ.get("HTTP_HOST", "")).lower()
        if host and not (host == "localhost" or _ip_literal(host)):
            return f"Host {host!r} names no address of this loopback-bound port"
    if environ.get("REQUEST_METHOD") not in _CHANGES:
        return None
    if environ.get("HTTP_ORIGIN") is not None:
        return "it carries an Origin header (a web page's request)"
    if environ.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {environ['HTTP_SEC_FETCH_SITE']!r}"
    content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        return f"its body is {content_type}, which an HTML form can send"
    return None


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def management_app(config: Config, repository: ModelRepository) -> Flask:
    """The management API's WSGI app (its own port)."""
    return Management(config, repository).app


class Management:
    """TorchServe's management API over ``repository`` (see the module): who may call it,
    then one method a route."""

    def __init__(self, config: Config, repository: ModelRepository) -> None:
        self.config, self.repository = config, repository
        self.store = config.model_store
        self.keys = KeyFile(config.key_file, config.token_expiration_min) \
            if config.token_auth else None
        self.bound_to_loopback = _loopback(config.management_host)
        self.allowed = [re.compile(p) for p in config.allowed_url_patterns]
        app = self.app = Flask("serving.management", static_folder=None)
        app.json.sort_keys = False
        app.before_request(self.who_may)
        app.register_error_handler(errors.ServingError, self.on_error)
        app.register_error_handler(HTTPException, self.on_http)
        app.add_url_rule("/token", "renew_key", self.renew_key, methods=["GET"])
        app.add_url_rule("/models", "list_models", self.list_models, methods=["GET"])
        app.add_url_rule("/models", "register_model", self.register_model, methods=["POST"])
        for rule in ("/models/<name>", "/models/<name>/<version>"):
            app.add_url_rule(rule, "describe_model", self.describe_model, methods=["GET"])
            app.add_url_rule(rule, "unregister_model", self.unregister_model,
                             methods=["DELETE"])

    # -- who may call it, and its errors -------------------------------------------------

    def who_may(self) -> None:
        environ = request.environ
        why = cross_site(environ, self.bound_to_loopback)
        if why is not None:
            raise CrossSiteRequest(f"refused: this request may come from a web page on "
                                   f"another site ({why}); call the management API from a "
                                   f"script or curl")
        keys = self.keys
        if keys is not None:
            if request.path == "/token":
                keys.check(environ.get("HTTP_AUTHORIZATION"), "API",
                           "Token Authentication failed. Token either incorrect, expired, "
                           "or not provided correctly")
            else:
                keys.check(environ.get("HTTP_AUTHORIZATION"), "management")

    def model_api(self) -> None:
        if not self.config.enable_model_api:
            raise MethodNotAllowedException("Requested method is not allowed, please refer "
                                            "to API document.")

    def on_error(self, error: errors.ServingError) -> Response:
        response = self.app.json.response(error.to_dict())
        response.status_code = error.status_code
        return response

    def on_http(self, error: HTTPException) -> Response:
        code = error.code or 500
        kind = errors.ClientError if 400 <= code < 500 else errors.ServingError
        message = (f"no route {request.method} {request.path}" if code == 404
                   else error.description)
        return self.on_error(kind(message, status_code=code))

    # -- the routes ----------------------------------------------------------------------

    def renew_key(self) -> Response:
        kind, keys = request.args.get("type"), self.keys
        if keys is None:
            raise errors.NotFound("token authorization is off (--disable-token-auth)")
        if kind not in KINDS:
            raise errors.BadRequest(f"type must be one of {', '.join(KINDS)}")
        keys.renew(kind)
        return self.app.json.response({"status": f"{kind} key renewed in {keys.path}"})

    def list_models(self) -> Response:
        try:
            size = int(request.args.get("limit", PAGE_SIZE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise errors.BadRequest(f"limit must be 1-{MAX_PAGE_SIZE}")
        return self.app.json.response(
            self.repository.page(request.args.get("next_page_token"), size))

    def describe_model(self, name: str, version: str | None = None) -> Response:
        self.check_version(name, version)
        return self.app.json.response([self.described(name)])

    def register_model(self) -> Response:
        self.model_api()
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
        path = self.archive_path(url)
        name = args.get("model_name")
        if name is None:
            name = _name_in(path, self.repository)
        if not valid_model_name(name):
            raise errors.BadRequest("model_name must be 1-255 characters: letters, digits and "
                                    "._+=- (not starting with one of those)")
        entry = self.repository.load(name, path, source=url)
        version = read_manifest(entry.url).version
        return self.app.json.response({"status": f'Model "{name}" Version: {version} '
                                                 f"registered with {self.config.workers} "
                                                 f"initial workers"})

    def unregister_model(self, name: str, version: str | None = None) -> Response:
        self.model_api()
        self.check_version(name, version)
        self.repository.unload(name)  # a .mar this server unpacked: its files go with it
        return self.app.json.response({"status": f'Model "{name}" unregistered'})

    # -- what the routes share -------------------------------------------------------------

    def described(self, name: str) -> dict[str, t.Any]:
        config, repository = self.config, self.repository
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

    def check_version(self, name: str, version: str | None) -> None:
        if version not in (None, "all") and \
                read_manifest(self.repository.entry(name).url).version != version:
            raise errors.NotFound(f"model {name} has no version {version}")

    def archive_path(self, url: str) -> str:
        """The real path of the archive ``url`` names, if it may be registered from.

        As TorchServe: a name in the store, an absolute path or a ``file://`` url; ``..``
        refused. Stricter: the path's real place (symlinks followed) must be in the
        store or match ``--allowed-urls`` as ``file://<real path>``.
        """
        store, allowed = self.store, self.allowed
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise errors.BadRequest(f"url {url}: only local archives can be registered "
                                    f"(nothing is downloaded)")
        path = parsed.path if parsed.scheme == "file" else url
        if ".." in path.split("/"):
            raise ModelNotFoundException(f"Relative path is not allowed in url: {url}")
        if not os.path.isabs(path):
            if store is None:
                raise ModelNotFoundException(f"Model not found at: {url}")
            path = os.path.join(store, path)
        if not os.path.exists(path):
            raise ModelNotFoundException(f"Model not found at: {url}")
        real = os.path.realpath(path)
        inside = store is not None and os.path.commonpath(
            [real, os.path.realpath(store)]) == os.path.realpath(store)
        if not inside and not any(p.fullmatch(f"file://{real}") for p in allowed):
            raise ModelNotFoundException(
                f"Given URL {url} does not match any allowed URL(s): it is {real}, outside "
                f"the model store{' and --allowed-urls' if allowed else ''}")
        return real


def _name_in(path: str, repository: ModelRepository) -> str:
    """The model name an archive's manifest gives (TorchServe's default)."""
    from serving.assembly.mar import ArchiveError

    try:
        return read_manifest(path).model_name
    except ArchiveError as exc:
        raise errors.BadRequest(str(exc)) from None
