"""TorchServe's ``config.properties`` (``--ts-config``), read into our settings.

A TorchServe user's start command names one (``torchserve --start --ts-config
config.properties``), and KServe's TorchServe runtime mounts one at
``/mnt/models/config/config.properties``: it says where the server listens, which
archives it serves (``load_models``, or a ``model_snapshot``), and each model's batching.
``serve --ts-config FILE`` reads it the way TorchServe 0.12 does:

- the file is a Java properties file (``key=value``, ``key: value`` or ``key value``;
  ``#`` and ``!`` comments; a backslash at a line's end continues it; ISO-8859-1);
- ``$$NAME$$`` in a value is the environment variable ``NAME`` (unset: refused, as
  TorchServe refuses it); with ``enable_envvars_config=true`` a ``TS_<KEY>`` variable
  replaces the file's ``<key>``;
- a ``model_snapshot`` chooses the archives and each one's settings, winning over the
  archive's model-config YAML (TorchServe restores a snapshot as it was saved);
  ``models`` gives per-model settings that the YAML's own keys win over.

A value in the file is a setting's last resort: our flag, then our variable, then the
file, then our default (``Config.load``). The keys that say who may do what are honoured
(``enable_model_api``, ``disable_token_authorization``, ``token_expiration_min``,
``allowed_urls``, ``use_env_allowed_urls``, ``model_server_home``) or, where this server
cannot honour them (CORS, TLS, ``blacklist_env_vars``), stop the start with an error
naming the key: a protection the user had is never dropped quietly. Keys that change
nothing here (TorchServe's own threading, queues, gRPC ports) are listed in the log at
start-up; an address we cannot serve (https, a unix socket) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing as t
import urllib.parse

__all__ = ["REFUSED", "TorchServeConfig", "TorchServeConfigError", "parse_properties",
           "read_ts_config"]


class TorchServeConfigError(ValueError):
    """A config.properties that cannot be served as it says; one line for the user."""


@dataclasses.dataclass(frozen=True)
class TorchServeConfig:
    """What one config.properties gives: raw values of our settings (each with the key it
    came from), per-model archive settings, and the keys that change nothing here."""

    path: str
    #: our setting's name -> (its raw text, as our parser takes it; the file's key)
    values: dict[str, tuple[str, str]]
    #: model name -> (settings in our names, whether they win over the archive's YAML)
    archive_settings: dict[str, tuple[dict[str, t.Any], bool]]
    ignored: tuple[str, ...]


# -- the Java properties format ---------------------------------------------------------

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _logical_lines(text: str) -> t.Iterator[str]:
    """The file's logical lines: comments and blank lines left out, a line ending in an
    odd number of backslashes joined to the next (whose leading blanks go)."""
    pending: str | None = None
    for line in text.splitlines():
        if pending is not None:
            line = pending + line.lstrip(" \t\f")
        elif not line.strip(" \t\f") or line.lstrip(" \t\f")[0] in "#!":
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending = line[:-1]
            continue
        pending = None
        yield line.lstrip(" \t\f")
    if pending is not None:
        yield pending


def _unescape(text: str) -> str:
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        following = text[index + 1]
        if following == "u":
            digits = text[index + 2:index + 6]
            if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise TorchServeConfigError(f"a malformed \\u escape: \\u{digits}")
            out.append(chr(int(digits, 16)))
            index += 6
            continue
        out.append(_ESCAPES.get(following, following))
        index += 2
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """A Java properties file's keys and values (the last of a key twice wins, as
    ``java.util.Properties.load`` does)."""
    properties: dict[str, str] = {}
    for line in _logical_lines(text):
        index, escaped = 0, False
        while index < len(line):  # the key ends at the first unescaped = : or blank
            char = line[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in "=: \t\f":
                break
            index += 1
        key, rest = line[:index], line[index:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        properties[_unescape(key)] = _unescape(rest)
    return properties


# -- from TorchServe's keys to our settings ---------------------------------------------

#: Keys read here with the setting each gives (the addresses and the models are below).
_PLAIN = {
    "model_store": "model_store",
    "default_workers_per_model": "workers",
    "default_response_timeout": "request_timeout",
    "install_py_dep_per_model": "install_requirements",
    "enable_metrics_api": "metrics",
    # Who may do what: honoured, as TorchServe 0.12 reads them.
    "enable_model_api": "enable_model_api",
    "disable_token_authorization": "disable_token_auth",
    "token_expiration_min": "token_expiration_min",
    "allowed_urls": "allowed_urls",
}
#: Keys that bear on who may do what and that this server cannot honour: a file naming
#: one does not start (a migrating user's protection is never dropped silently).
REFUSED = {
    "cors_allowed_origin": "cross-origin access (CORS) is not served here: put it in a "
                           "proxy in front, or remove the key",
    "cors_allowed_methods": "cross-origin access (CORS) is not served here",
    "cors_allowed_headers": "cross-origin access (CORS) is not served here",
    "keystore": "TLS ends in front of the server (a load balancer, an ingress, a sidecar)",
    "keystore_pass": "TLS ends in front of the server",
    "keystore_type": "TLS ends in front of the server",
    "certificate_file": "TLS ends in front of the server",
    "private_key_file": "TLS ends in front of the server",
    "enable_grpc_ssl": "gRPC is not served here, with TLS or without",
    "blacklist_env_vars": "handlers run in the server's own workers and see its "
                          "environment: leave the variables out of the container's instead",
}
_READ = {*_PLAIN, "inference_address", "management_address", "metrics_address",
         "load_models", "model_snapshot", "models", "max_request_size", "number_of_gpu",
         "enable_envvars_config", "use_env_allowed_urls", "model_server_home"}
_VARIABLE = re.compile(r"\$\$([^$]+[^$])\$\$")  # TorchServe's $$NAME$$


def read_ts_config(path: str, environ: t.Mapping[str, str]) -> TorchServeConfig:
    """The settings ``path`` gives.

    :raises TorchServeConfigError: a file that cannot be read, a value that cannot be
        served, an unset ``$$NAME$$``.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(1024 * 1024 + 1).decode("iso-8859-1")
    except OSError as exc:
        raise TorchServeConfigError(f"--ts-config {path}: {exc.strerror}") from None
    if len(text) > 1024 * 1024:
        raise TorchServeConfigError(f"--ts-config {path}: more than 1 MiB")
    try:
        properties = parse_properties(text)
    except TorchServeConfigError as exc:
        raise TorchServeConfigError(f"--ts-config {path}: {exc}") from None
    for key, value in properties.items():
        def variable(match: re.Match[str], key: str = key) -> str:
            if match.group(1) not in environ:
                raise TorchServeConfigError(f"{key} in {path}: {match.group(0)} names "
                                            f"{match.group(1)}, which is not set")
            return environ[match.group(1)]

        properties[key] = _VARIABLE.sub(variable, value)
    if properties.get("enable_envvars_config", "").strip().lower() == "true":
        for key in _READ - {"enable_envvars_config"}:
            if f"TS_{key.upper()}" in environ:
                properties[key] = environ[f"TS_{key.upper()}"]

    def where(key: str) -> str:
        return f"{key} in {path}"

    refused = sorted(key for key in properties if key in REFUSED)
    if refused:
        raise TorchServeConfigError(f"{where(refused[0])}: {REFUSED[refused[0]]}")
    if properties.get("use_env_allowed_urls", "").strip().lower() == "true":
        # TorchServe's way to give allowed_urls from the environment.
        if environ.get("TS_ALLOWED_URLS", "").strip():
            properties["allowed_urls"] = environ["TS_ALLOWED_URLS"]
    values: dict[str, tuple[str, str]] = {}
    if properties.get("model_server_home", "").strip():
        values["key_file"] = (os.path.join(properties["model_server_home"].strip(),
                                           "key_file.json"), "model_server_home")
    for key, name in _PLAIN.items():
        if properties.get(key, "").strip():
            values[name] = (properties[key], key)
    if values.get("workers", ("", ""))[0].strip() == "0":
        del values["workers"]  # TorchServe's 0: one per GPU, else per CPU (as our default)
    if properties.get("number_of_gpu", "").strip() == "0":
        values["device"] = ("cpu", "number_of_gpu")
    if properties.get("max_request_size", "").strip():
        try:
            size = int(properties["max_request_size"])
        except ValueError:
            raise TorchServeConfigError(f"{where('max_request_size')}: not a number of "
                                        f"bytes") from None
        values["max_payload_mb"] = (repr(size / 2**20), "max_request_size")
    for key, host, port in (("inference_address", "host", "port"),
                            ("management_address", "management_host", "management_port")):
        if properties.get(key, "").strip():
            address = _address(properties[key], where(key))
            values[host], values[port] = (address[0], key), (str(address[1]), key)
    if properties.get("metrics_address", "").strip():
        _, port = _address(properties["metrics_address"], where("metrics_address"))
        values["metrics_port"] = (str(port), "metrics_address")
    archive_settings: dict[str, tuple[dict[str, t.Any], bool]] = {}
    if properties.get("models", "").strip():
        for name, (_, settings) in _models(properties["models"], where("models"),
                                           chosen=False).items():
            archive_settings[name] = (settings, False)
    if properties.get("model_snapshot", "").strip():
        snapshot = _models(_snapshot_models(properties["model_snapshot"],
                                            where("model_snapshot")),
                           where("model_snapshot"), chosen=True)
        values["models"] = (",".join(f"{name}={mar}" for name, (mar, _) in snapshot.items())
                            or "none", "model_snapshot")
        for name, (_, settings) in snapshot.items():
            archive_settings[name] = (settings, True)
    elif properties.get("load_models", "").strip():
        load = properties["load_models"].strip()
        values["models"] = (load.lower() if load.lower() in ("all", "none") else load,
                            "load_models")
    # TorchServe's own threads, queues, token authorization, gRPC, envelopes...: nothing
    # to set here, so listed in the start-up log rather than refused.
    ignored = tuple(sorted(key for key in properties if key not in _READ))
    return TorchServeConfig(path, values, archive_settings, ignored)


def _address(text: str, where: str) -> tuple[str, int]:
    """``http://HOST:PORT`` as (host, port); TorchServe's default port where none is
    given is not guessed: a port must be named."""
    url = urllib.parse.urlsplit(text.strip())
    if url.scheme != "http":
        raise TorchServeConfigError(
            f"{where}: {text.strip()} is not served here: only http://HOST:PORT (TLS ends "
            f"in front of the server: a load balancer, an ingress, a sidecar)")
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or port is None or url.path not in ("", "/"):
        raise TorchServeConfigError(f"{where}: {text.strip()} is not http://HOST:PORT")
    return url.hostname, port


def _snapshot_models(text: str, where: str) -> t.Any:
    try:
        snapshot = json.loads(text)
    except ValueError as exc:
        raise TorchServeConfigError(f"{where}: not JSON: {exc}") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("models", {}), dict):
        raise TorchServeConfigError(f"{where}: a snapshot is an object whose \"models\" maps "
                                    f"names to versions")
    return snapshot.get("models", {})


#: The per-model keys of a snapshot (and of ``models``) that map onto our settings.
_MODEL_KEYS = ("batchSize", "maxBatchDelay", "responseTimeout", "minWorkers")


def _models(models: t.Any, where: str, chosen: bool
            ) -> dict[str, tuple[str | None, dict[str, t.Any]]]:
    """``{name: {version: {marName, defaultVersion, batchSize, ...}}}`` as each model's
    archive file and settings. ``chosen``: a snapshot, which names the archive each model
    is served from (one version a name: the default one, when it lists several)."""
    if isinstance(models, str):
        try:
            models = json.loads(models)
        except ValueError as exc:
            raise TorchServeConfigError(f"{where}: not JSON: {exc}") from None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise TorchServeConfigError(f"{where}: models map each name to its versions, "
                                    f"{{\"name\": {{\"1.0\": {{...}}}}}}")
    chosen_models: dict[str, tuple[str | None, dict[str, t.Any]]] = {}
    for name, versions in models.items():
        entries = [v for v in versions.values() if isinstance(v, dict)]
        if len(entries) != len(versions) or not entries:
            raise TorchServeConfigError(f"{where}: model {name}: each version is an object")
        if len(entries) > 1:
            defaults = [v for v in entries if v.get("defaultVersion") is True]
            if len(defaults) != 1:
                raise TorchServeConfigError(
                    f"{where}: model {name} lists {len(entries)} versions and "
                    f"{len(defaults)} of them has defaultVersion true: one model a name is "
                    f"served here, so exactly one must")
            entries = defaults
        entry = entries[0]
        mar = entry.get("marName")
        if chosen and (not isinstance(mar, str) or not mar.strip()):
            raise TorchServeConfigError(f"{where}: model {name}: no marName")
        if chosen and ("," in mar or "=" in mar):
            raise TorchServeConfigError(f"{where}: model {name}: marName {mar!r} is not a "
                                        f"file name")
        settings = settings_from_mapping({k: entry[k] for k in _MODEL_KEYS if k in entry},
                                         f"{where}: model {name}", TorchServeConfigError)
        chosen_models[name] = (mar.strip() if isinstance(mar, str) else None, settings)
    return chosen_models


#: The model-config YAML's keys that map onto our settings, in the same units (ms, s).
CONFIG_SETTINGS = {
    "batchSize": "max_batch_size",
    "maxBatchDelay": "max_batch_delay_ms",
    "responseTimeout": "request_timeout",
    "minWorkers": "workers",
}


def settings_from_mapping(config: t.Mapping[str, t.Any], where: str,
                          error: type[Exception] = ValueError) -> dict[str, t.Any]:
    """Our settings from TorchServe's per-model keys (:data:`CONFIG_SETTINGS`), as a
    model-config YAML or a config.properties snapshot gives them, checked (``error``: what a
    bad value raises)."""
    settings: dict[str, t.Any] = {}
    for key, setting in CONFIG_SETTINGS.items():
        if key not in config:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise error(f"{where}: {key} must be a number of 0 or more, not {value!r}")
        if key in ("batchSize", "minWorkers") and (value != int(value) or value < 1):
            raise error(f"{where}: {key} must be a whole number of 1 or more, not "
                               f"{value!r}")
        settings[setting] = int(value) if key in ("batchSize", "minWorkers") else value
    return settings
