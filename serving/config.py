"""The server's settings: declared once here, read once at start-up.

Each setting is a field of :class:`Config`, declared there once with its CLI
flag, environment variable, default, parser and help text (:func:`setting`).
:data:`SETTINGS` lists them as :class:`Setting` records, and ``serve --help`` and
the table in docs/reference/settings.md are both generated from it
(``python -m serving.config`` prints the table), so they cannot drift.

Precedence: CLI flag > environment variable > default. Nothing else in the
project reads ``os.environ`` for a setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import logging
import os
import pwd
import re
import typing as t
from dataclasses import dataclass, field

from handlers.frameworks import FRAMEWORKS
from serving.media_types import parse_media_type

if t.TYPE_CHECKING:
    from serving.torchserve_config import TorchServeConfig

__all__ = ["Config", "ConfigError", "SETTINGS", "Setting", "settings_table"]


class ConfigError(ValueError):
    """A setting with a value it cannot take; its message is one line for the user."""


# -- the hosts, as data: what --engine names, and what each can carry ---------------

#: What a host may carry, the settings that need it check (a host lacking one refuses them):
#: ``management``: TorchServe's management API on a port of its own; ``model_store``: many
#: archives loaded at start; ``multi_model``: models loaded and unloaded through /models in
#: every process alike; ``metrics_port``: /metrics on a port of its own; ``confined_ports``:
#: it listens on no port but those it is given (--safe-port-range can hold); ``grpc``: a
#: protocol's own gRPC server in each process (the Open Inference Protocol's).
CAPABILITIES = frozenset({"management", "model_store", "multi_model", "metrics_port",
                          "confined_ports", "streams", "grpc"})


@dataclass(frozen=True)
class Engine:
    """One ``--engine``: the module of its host (``run(config, metrics_dir)``), imported only
    when chosen, and what it can carry (:data:`CAPABILITIES`)."""

    module: str
    carries: frozenset[str]
    #: How the settings name what it cannot carry: "the ray engine".
    label: str = ""


#: ``--engine`` → its host. A new host: a module in ``serving/hosts/`` and a line here.
ENGINES: dict[str, Engine] = {
    "gunicorn": Engine("serving.hosts.gunicorn.application", CAPABILITIES),
    # A Ray replica holds one model; its proxy serves /metrics; a local Ray instance listens
    # on ports of its own (a cluster at --ray-address does not count here).
    "ray": Engine("serving.hosts.ray", frozenset({"streams"})),
}


# -- parsers: str -> value, raising ValueError with the reason ------------------


def _int_in(low: int, high: int | None = None) -> t.Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("not an integer") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be {low} or more" if high is None else f"must be {low}-{high}")
        return value

    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def _non_negative_number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not value >= 0:
        raise ValueError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = _positive_number(text)
    return int(value) if value == int(value) else value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (true/false, 1/0, yes/no, on/off)")


def _log_level(text: str) -> int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError("not a log level (a number such as 20, or DEBUG, INFO, WARNING, ERROR)")
    return level


def _media_type(text: str) -> str:
    media = parse_media_type(text)
    if "*" in (media.type, media.subtype):
        raise ValueError("must be a concrete media type, not a wildcard")
    return media.essence


def _choice(*options: str) -> t.Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _device(text: str) -> str:
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value
    kind, colon, index = value.partition(":")
    if kind == "cuda" and colon and index.isdigit():
        return f"cuda:{int(index)}"
    raise ValueError("must be auto, cpu, cuda or cuda:N")


def _port_range(text: str) -> tuple[int, int]:
    low, dash, high = text.strip().partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise ValueError("not a port range XXXX-YYYY") from None
    if not dash or not 1 <= first <= last <= 65535:
        raise ValueError("not a port range XXXX-YYYY (1-65535, the first no more than the last)")
    return first, last


def _port_or_auto(text: str) -> int:
    """A port, or ``auto`` (0): one the server picks, free, inside the safe range if any."""
    return 0 if text.strip().lower() == "auto" else _int_in(1, 65535)(text)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _version(text: str) -> str:
    text = _text(text)
    if not (text.isascii() and text.isprintable()) or any(c in text for c in "/ ?#%"):
        raise ValueError("must be one path segment: visible ASCII without / ? # % or spaces")
    return text


def _path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(_text(text)))


def _read_ts_config(path: str | None, environ: t.Mapping[str, str]) -> TorchServeConfig | None:
    """TorchServe's config.properties at ``path`` (``--ts-config``), or None."""
    if path is None or not path.strip():
        return None
    from serving.torchserve_config import TorchServeConfigError, read_ts_config

    try:
        return read_ts_config(_path(path), environ)
    except TorchServeConfigError as exc:
        raise ConfigError(str(exc)) from None


def _default_key_file() -> str:
    """key_file.json in the working directory, as TorchServe writes it; in the temporary
    directory where the working directory cannot be written (a container's read-only
    model directory), so that token authorization never stops a start for want of it."""
    import tempfile

    here = os.getcwd()
    return os.path.join(here if os.access(here, os.W_OK) else tempfile.gettempdir(),
                        "key_file.json")


def cpu_count() -> int:
    # The CPUs this process may run on (cgroup and taskset aware), not the host's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- the settings -----------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting, with everything about it in one place."""

    name: str
    flag: str
    env: str | None
    default: t.Any  # a value, or a callable giving one
    parse: t.Callable[[str], t.Any]
    help: str
    switch: bool = False  # a boolean: --flag / --no-flag
    metavar: str | None = None
    #: How the default reads in help and the settings table when it is not a plain value.
    default_help: str | None = None

    def default_value(self) -> t.Any:
        return self.default() if callable(self.default) else self.default

    @property
    def default_text(self) -> str:
        if self.default is cpu_count:
            return "number of CPUs"
        if self.default_help is not None:
            return self.default_help
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def setting(flag: str, env: str | None, default: t.Any, parse: t.Callable[[str], t.Any],
            help: str, **more: t.Any) -> t.Any:
    """A :class:`Config` field that is a setting: everything of it but its name, which is
    the field's (:data:`SETTINGS` is made from the fields)."""
    return field(metadata={"setting": {"flag": flag, "env": env, "default": default,
                                       "parse": parse, "help": help, **more}})


@dataclass(frozen=True)
class Config:
    """The validated settings of one ``serve``: each field is a setting, declared here once
    with its flag, variable, default, parser and help."""

    model_dir: str = setting(
        "--model-dir", "SM_MODEL_DIR", "/opt/ml/model", _path,
        "Directory holding the model artifacts (an unpacked model.tar.gz).", metavar="DIR")
    host: str = setting(
        "--host", "SERVING_HOST", "0.0.0.0", _text,
        "Address to listen on.", metavar="ADDR")
    port: int = setting(
        "--port", "SAGEMAKER_BIND_TO_PORT", 8080, _int_in(1, 65535),
        "TCP port to listen on.", metavar="PORT")
    workers: int = setting(
        "--workers", "SAGEMAKER_MODEL_SERVER_WORKERS", cpu_count, _int_in(1),
        "Worker processes. Unset on GPUs: one per GPU.", metavar="N")
    threads: int = setting(
        "--threads", "SERVING_THREADS", 4, _int_in(1),
        "Threads per worker: connections one worker serves at once.", metavar="N")
    timeout: int = setting(
        "--timeout", "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60, _int_in(1),
        "Seconds a worker may go silent before it is restarted, and the grace "
        "period for in-flight requests on SIGTERM.", metavar="SECONDS")
    request_timeout: float | None = setting(
        "--request-timeout", "SERVING_REQUEST_TIMEOUT", None, _seconds,
        "Deadline of one /invocations, in seconds: past it the client gets 504 at once, and "
        "a worker whose prediction is stuck is replaced once it has answered what else it "
        "holds.", metavar="SECONDS", default_help="--timeout")
    header_timeout: float = setting(
        "--header-timeout", "SERVING_HEADER_TIMEOUT", 10, _seconds,
        "Seconds a client has to send a request's headers; past it: 408 and the "
        "connection closed. Also how long a client that does not read may hold up its "
        "answer (plus its size at the minimum body rate).", metavar="SECONDS")
    min_body_rate_kb: float = setting(
        "--min-body-rate-kb", "SERVING_MIN_BODY_RATE_KB", 64,
        _positive_number, "Slowest request body accepted after its first second, in "
        "KiB/s; a slower client gets 408 and its connection closed.", metavar="KB")
    max_connections: int = setting(
        "--max-connections", "SERVING_MAX_CONNECTIONS", 1000,
        _int_in(1), "Connections one worker holds open at once (idle, sending or being "
        "answered); past it the worker stops accepting.", metavar="N")
    max_decoded_mb: float = setting(
        "--max-decoded-mb", "SERVING_MAX_DECODED_MB", 128,
        _positive_number, "Most memory a request body may decode to, in MiB (image pixels, "
        "NPZ members, CSV cells, JSON elements, recordio records); over it: 413, checked "
        "before the memory is spent.", metavar="MB")
    max_batch_size: int = setting(
        "--max-batch-size", "SERVING_MAX_BATCH_SIZE", 1, _int_in(1, 512),
        "Dynamic batching: most rows one predict call joins from concurrent requests of a "
        "worker (1: off; at most 512, as each worker then serves up to max(--threads, "
        "2 x this) requests at once, a thread each). Joins NumPy inputs of 2+ dimensions "
        "for the framework's default predict, or for a predict_fn marked @serving.batched.",
        metavar="N")
    max_batch_delay_ms: float = setting(
        "--max-batch-delay-ms", "SERVING_MAX_BATCH_DELAY_MS", 5,
        _non_negative_number, "Dynamic batching: longest a request waits for others to "
        "join its batch, in ms. A batch runs at once when full, or when no other request "
        "is on its way (none decoding, no other client connected to the worker): a lone "
        "client never waits.", metavar="MS")
    max_streams: int = setting(
        "--max-streams", "SERVING_MAX_STREAMS", 64, _int_in(1),
        "Bidirectional streams (WebSockets) one worker holds open at once, a thread each; "
        "past it an upgrade gets 503. The HTTP threads are never held by a stream.",
        metavar="N")
    stream_max_message_mb: float | None = setting(
        "--stream-max-message-mb", "SERVING_STREAM_MAX_MESSAGE_MB", None, _positive_number,
        "Largest message of a bidirectional stream, its fragments together, in MiB; past "
        "it the stream is closed with 1009, counted as the bytes arrive.", metavar="MB",
        default_help="--max-payload-mb")
    stream_max_total_mb: float = setting(
        "--stream-max-total-mb", "SERVING_STREAM_MAX_TOTAL_MB", 1024, _positive_number,
        "Most bytes of messages one stream may send, in MiB; past it: closed with 1008.",
        metavar="MB")
    stream_idle_timeout: float = setting(
        "--stream-idle-timeout", "SERVING_STREAM_IDLE_TIMEOUT", 600, _seconds,
        "Seconds a stream may go without a message while its model waits for one (pings "
        "do not count); past it: closed with 1008.", metavar="SECONDS")
    stream_max_seconds: float = setting(
        "--stream-max-seconds", "SERVING_STREAM_MAX_SECONDS", 3600, _seconds,
        "Longest life of one stream, in seconds; past it: closed with 1008.",
        metavar="SECONDS")
    stream_ping_interval: float = setting(
        "--stream-ping-interval", "SERVING_STREAM_PING_INTERVAL", 60, _seconds,
        "Seconds between the server's pings on an open stream (SageMaker's sidecar pings "
        "every 60 s too; pings from the client are answered at once).", metavar="SECONDS")
    stream_missed_pings: int = setting(
        "--stream-missed-pings", "SERVING_STREAM_MISSED_PINGS", 5, _int_in(1),
        "Pings in a row without a pong after which the server closes a stream (1008), as "
        "SageMaker does after 5.", metavar="N")
    enable_stateful_sessions: bool = setting(
        "--stateful-sessions", "SAGEMAKER_ENABLE_STATEFUL_SESSIONS", False, _bool,
        "Stateful sessions (SageMaker's sticky routing): a request with the body "
        '{"requestType": "NEW_SESSION"} opens one, X-Amzn-SageMaker-Session-Id uses it, '
        '{"requestType": "CLOSE"} closes it. Off: such requests get 400.', switch=True)
    sessions_expiration: float = setting(
        "--sessions-expiration", "SAGEMAKER_SESSIONS_EXPIRATION", 1200, _seconds,
        "Seconds a session lives from its opening; after that its id gets 400.",
        metavar="SECONDS")
    session_wait: float = setting(
        "--session-wait", "SERVING_SESSION_WAIT", 5, _seconds,
        "Seconds a request waits for its session while another request of the same "
        "session runs; then 429. The wait does not count against its deadline.",
        metavar="SECONDS")
    sessions_path: str = setting(
        "--sessions-path", "SAGEMAKER_SESSIONS_PATH", "/dev/shm/sagemaker_sessions", _path,
        "Directory of the sessions' files, which every worker shares (shared memory by "
        "default: sessions do not outlive the container).", metavar="DIR")
    debug_errors: bool = setting(
        "--debug-errors", "SERVING_DEBUG_ERRORS", False, _bool,
        "Put the exception's text in 500 bodies (it may hold paths or data: for "
        "development only). The traceback is always logged.", switch=True)
    default_accept: str = setting(
        "--default-accept", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
        "application/json", _media_type,
        "Response type when the request has no Accept header or accepts */*.",
        metavar="TYPE")
    json_float32: str = setting(
        "--json-float32", "SERVING_JSON_FLOAT32", "float64",
        _choice("float64", "shortest"),
        "How JSON answers write float16/float32 values. float64: widened to a double, as "
        "AWS's containers write them (a client reading doubles gets float(np.float32(x))). "
        "shortest: the shortest float32 form, about half the digits (the same float32 read "
        "back as one, another double read as one).", metavar="FORM")
    max_payload_mb: float = setting(
        "--max-payload-mb", "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6,
        _positive_number, "Largest request body, in MiB; larger ones get 413.", metavar="MB")
    log_level: int = setting(
        "--log-level", "SAGEMAKER_CONTAINER_LOG_LEVEL", 20, _log_level,
        "Python log level, as a number (20) or a name (INFO).", metavar="LEVEL")
    log_format: str = setting(
        "--log-format", "SERVING_LOG_FORMAT", "text", _choice("text", "json"),
        "text: gunicorn's layout with the request id; json: one JSON object a line (time, "
        "level, logger, message, request_id, worker, and status and latency_ms on access "
        "lines).", metavar="FORMAT")
    metrics: bool = setting(
        "--metrics", "SERVING_METRICS", True, _bool,
        "Serve Prometheus metrics at GET /metrics, added up across workers.", switch=True)
    metrics_dir: str | None = setting(
        "--metrics-dir", "PROMETHEUS_MULTIPROC_DIR", None, _path,
        "Directory for the workers' metric files (prometheus_client's variable); emptied "
        "at start. Unset: a fresh one in /dev/shm (else the temporary directory), removed "
        "at exit.", metavar="DIR", default_help="a fresh one")
    metrics_port: int | None = setting(
        "--metrics-port", "SERVING_METRICS_PORT", None, _port_or_auto,
        "Serve /metrics on this port instead of the main one (which then answers 404 "
        "there), so that a load balancer in front of the main port never exposes it. "
        "auto: a free port, inside SAGEMAKER_SAFE_PORT_RANGE when that is set (the log "
        "says which).", metavar="PORT", default_help="the main port")
    safe_port_range: tuple[int, int] | None = setting(
        "--safe-port-range", "SAGEMAKER_SAFE_PORT_RANGE", None,
        _port_range,
        "The ports (XXXX-YYYY, inclusive) this container may listen on besides the main "
        "one: SageMaker sets it for each container of a multi-container endpoint. A "
        "--metrics-port outside it is refused.", metavar="XXXX-YYYY")
    multi_model: bool = setting(
        "--multi-model", "SAGEMAKER_MULTI_MODEL", False, _bool,
        "Multi-model endpoint: models are loaded, listed and unloaded at run time through "
        "/models (the SageMaker multi-model contract); the model directory may be empty "
        "or absent.", switch=True)
    multi_model_root: str = setting(
        "--multi-model-root", "SERVING_MULTI_MODEL_ROOT", "/opt/ml/models", _path,
        "Multi-model: POST /models loads only from under this directory (symlinks "
        "followed), where SageMaker puts the models it loads; any other url is a 400.",
        metavar="DIR")
    model_store: str | None = setting(
        "--model-store", "SERVING_MODEL_STORE", None, _path,
        "A TorchServe model store: a directory of model archives (.mar files, or unpacked "
        "archives with MAR-INF/MANIFEST.json), each served by its name at "
        "/predictions/<name> (--models says which). --model-dir may also be one archive.",
        metavar="DIR")
    models: str = setting(
        "--models", "SERVING_MODELS", "all", _text,
        "With --model-store, the archives to serve from the start, as TorchServe takes "
        "them: all, none (with --management-port: loaded later), or name=file.mar,... (a "
        "bare file.mar is named by its manifest's modelName).",
        metavar="LIST")
    ts_config: str | None = setting(
        "--ts-config", "TS_CONFIG_FILE", None, _path,
        "A TorchServe config.properties, read as TorchServe 0.12 reads it: its addresses, "
        "model_store, load_models or model_snapshot (each model's batchSize, "
        "maxBatchDelay, responseTimeout, minWorkers), default_workers_per_model, "
        "default_response_timeout, max_request_size, install_py_dep_per_model. A flag or "
        "variable of ours wins over the file; keys that change nothing here are listed "
        "in the start-up log.", metavar="FILE", default_help="none")
    grpc_port: int | None = setting(
        "--grpc-port", "SERVING_GRPC_PORT", None, _int_in(1, 65535),
        "Serve the Open Inference Protocol over gRPC (KServe's and Triton's gRPC clients; "
        "KServe's own port for it is 8081) on this port, at --host, in every worker. Off "
        "unless set: a second port is a second way in, and it needs the grpc extra "
        "(grpcio and Triton's generated stubs).", metavar="PORT", default_help="off")
    repository_api: str = setting(
        "--repository-api", "SERVING_REPOSITORY_API", "off", _choice("off", "local", "any"),
        "The Open Inference Protocol's model repository extension (POST /v2/repository/index, "
        "/v2/repository/models/<name>/load and /unload, and the same over gRPC), which loads "
        "and unloads models of --model-store or --multi-model-root by name: off; local (only "
        "clients on the loopback address, a sidecar in the pod); or any (whoever reaches the "
        "port).", metavar="WHO")
    model_version: str = setting(
        "--model-version", "SERVING_MODEL_VERSION", "1", _version,
        "The version KServe's protocols give a model that is not a TorchServe archive (an "
        "archive's is its manifest's): /v2/models/<name>/versions/<version> routes to it, and "
        "its metadata lists it.", metavar="VERSION")
    management_port: int | None = setting(
        "--management-port", "SERVING_MANAGEMENT_PORT", None, _int_in(1, 65535),
        "Serve TorchServe's management API (GET, POST and DELETE /models) on this port, "
        "and nothing else there: model archives are then loaded and unloaded at run time. "
        "Needs --model-store or a .mar as --model-dir; the gunicorn engine only.",
        metavar="PORT", default_help="off")
    management_host: str = setting(
        "--management-host", "SERVING_MANAGEMENT_HOST", "127.0.0.1", _text,
        "Address the management API listens on, whatever --host is: loopback unless an "
        "address is named for it (as TorchServe keeps it on 127.0.0.1), so that only this "
        "machine or pod reaches it.", metavar="ADDR")
    enable_model_api: bool = setting(
        "--enable-model-api", "SERVING_ENABLE_MODEL_API", False, _bool,
        "Let the management API register and unregister models (POST and DELETE /models), "
        "as TorchServe's --enable-model-api and enable_model_api=true do. Off: those calls "
        "get TorchServe's 405, and the models served are the ones named at start.",
        switch=True)
    disable_token_auth: bool = setting(
        "--disable-token-auth", "SERVING_DISABLE_TOKEN_AUTH", False, _bool,
        "Turn off TorchServe's token authorization (disable_token_authorization=true). On, "
        "the management API needs its key (Authorization: Bearer <key>, from --key-file), "
        "and with --model-store every route of the main port but /openapi.json and "
        "/metrics needs the inference key, as on TorchServe 0.12.", switch=True)
    key_file: str = setting(
        "--key-file", "SERVING_KEY_FILE", _default_key_file, _path,
        "Where token authorization writes its keys (TorchServe's key_file.json, mode 0600; "
        "removed when the server stops). TorchServe's model_server_home puts it there.",
        metavar="FILE",
        default_help="./key_file.json (in the temporary directory where . is read-only)")
    token_expiration_min: float = setting(
        "--token-expiration-min", "SERVING_TOKEN_EXPIRATION_MIN", 60, _positive_number,
        "Minutes the management and inference keys are good for; GET /token?type=... on "
        "the management port, with the API key, makes a new one.", metavar="MINUTES")
    allowed_urls: str | None = setting(
        "--allowed-urls", "SERVING_ALLOWED_URLS", None, _text,
        "Management API: where besides the model store POST /models may register from, as "
        "TorchServe's allowed_urls: comma-separated regular expressions, each matched "
        "whole against file://<the url's real path> (symlinks followed).",
        metavar="REGEXES", default_help="the model store only")
    archive_max_mb: float = setting(
        "--archive-max-mb", "SERVING_ARCHIVE_MAX_MB", 10240, _positive_number,
        "The most one model archive may unpack to, in MiB, counted as it is unpacked.",
        metavar="MB")
    models_memory_mb: float | None = setting(
        "--models-memory-mb", "SERVING_MODELS_MEMORY_MB", None,
        _positive_number, "Multi-model: the most the loaded models may take, in MiB (a "
        "model counts the size of its files; every worker holds every model). Loading past "
        "it unloads the least recently used; a model larger than it alone gets 507.",
        metavar="MB", default_help="half the memory / workers")
    engine: str = setting(
        "--engine", "SERVING_ENGINE", "gunicorn", _choice(*ENGINES),
        "What serves the model: gunicorn (worker processes on this machine) or ray (Ray "
        "Serve replicas, on this machine's Ray or the cluster at --ray-address; needs "
        "serving-toolkit[ray]). Same routes, answers and errors.", metavar="ENGINE")
    ray_address: str | None = setting(
        "--ray-address", "RAY_ADDRESS", None, _text,
        "Ray engine: the cluster to serve on. Unset: a local Ray instance, started and "
        "stopped by serve.", metavar="ADDR", default_help="a local one")
    ray_replicas: int = setting(
        "--ray-replicas", "SERVING_RAY_REPLICAS", 1, _int_in(1),
        "Ray engine: replicas of the model, each a process holding it; with "
        "--ray-max-replicas, the fewest autoscaling keeps.", metavar="N")
    ray_max_replicas: int | None = setting(
        "--ray-max-replicas", "SERVING_RAY_MAX_REPLICAS", None,
        _int_in(1), "Ray engine: autoscale between --ray-replicas and this many replicas, "
        "aiming at --ray-target-ongoing-requests per replica.", metavar="N",
        default_help="no autoscaling")
    ray_target_ongoing_requests: float = setting(
        "--ray-target-ongoing-requests",
        "SERVING_RAY_TARGET_ONGOING_REQUESTS", 2, _positive_number,
        "Ray engine, autoscaling: requests per replica it aims at.", metavar="N")
    ray_num_cpus: float = setting(
        "--ray-num-cpus", "SERVING_RAY_NUM_CPUS", 1, _positive_number,
        "Ray engine: CPUs each replica reserves (and its math libraries' threads).",
        metavar="N")
    ray_num_gpus: float = setting(
        "--ray-num-gpus", "SERVING_RAY_NUM_GPUS", 0, _non_negative_number,
        "Ray engine: GPUs each replica reserves (fractions share one); more than 0 puts the "
        "model on the replica's GPU.", metavar="N")
    program: str | None = setting(
        "--program", "SAGEMAKER_PROGRAM", None, _text,
        "The user's script, in the submit directory. Unset: "
        "<model-dir>/code/inference.py when it exists.", metavar="FILE")
    submit_dir: str = setting(
        "--submit-dir", "SAGEMAKER_SUBMIT_DIRECTORY", "/opt/ml/code", _path,
        "Where --program lives: a directory or a .tar.gz.", metavar="PATH")
    install_requirements: bool = setting(
        "--install-requirements", "SERVING_INSTALL_REQUIREMENTS",
        True, _bool, "pip-install the requirements.txt beside the user's script at start-up.",
        switch=True)
    preload: bool = setting(
        "--preload", "SERVING_PRELOAD", True, _bool,
        "Load the model once before forking workers, which then share it copy-on-write. "
        "Off: each worker loads its own; always off on GPUs.", switch=True)
    framework: str = setting(
        "--framework", "SERVING_FRAMEWORK", "auto",
        _choice("auto", *FRAMEWORKS, "none"),
        "Framework handler for the default model_fn and predict_fn. auto: from the model "
        "directory's files, else from the type model_fn returns.", metavar="NAME")
    device: str = setting(
        "--device", "SERVING_DEVICE", "auto", _device,
        "Where models run: auto (GPUs when present), cpu, cuda (worker i on GPU i mod N) "
        "or cuda:N.", metavar="DEVICE")
    run_as: str = setting(
        "--run-as", "SERVING_RUN_AS", "serving", _choice("serving", "root"),
        "The image's entrypoint, started as root (as SageMaker starts containers): "
        "serving drops to the unprivileged user serving (uid 10001) before anything runs; "
        "root keeps root, so that a model only root may read can be served, at the cost "
        "that the model's code and its requirements.txt run with root's rights. Started "
        "as another uid (Kubernetes runAsUser), the server runs as that uid either way.",
        metavar="USER")
    trust_pickled_models: bool = setting(
        "--trust-pickled-models", "SERVING_TRUST_PICKLED_MODELS",
        False, _bool, "Let the PyTorch handler load a pickled nn.Module (torch.save(model)); "
        "unpickling runs code from the file.", switch=True)
    #: Where each value came from: "flag", "env", "default", or "ts-config:<its key>".
    sources: t.Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: Model archive name -> (settings, whether they win over its YAML): --ts-config's.
    archive_settings: t.Mapping[str, tuple[dict[str, t.Any], bool]] = field(
        default_factory=dict, compare=False, repr=False)
    #: --ts-config's keys that change nothing here (the start-up log lists them).
    ts_ignored: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 2**20)

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 2**20)

    @property
    def allowed_url_patterns(self) -> tuple[str, ...]:
        """--allowed-urls as its regular expressions (TorchServe's comma-separated list)."""
        if self.allowed_urls is None:
            return ()
        return tuple(p.strip() for p in self.allowed_urls.split(",") if p.strip())

    @property
    def token_auth(self) -> bool:
        """Whether TorchServe's token authorization guards its APIs here."""
        return not self.disable_token_auth

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def concurrency(self) -> int:
        """Requests one worker serves at once: its threads; with batching, enough to fill one
        batch while the previous one runs."""
        return max(self.threads, 2 * self.max_batch_size) if self.batching else self.threads

    @property
    def deadline_seconds(self) -> float:
        """The deadline of one /invocations: --request-timeout, else --timeout."""
        return self.request_timeout if self.request_timeout is not None else self.timeout

    @classmethod
    def load(
        cls, argv: t.Sequence[str] | None = None, environ: t.Mapping[str, str] | None = None
    ) -> Config:
        """Build the settings from CLI flags, then the environment, then defaults.

        Raises :class:`ConfigError` naming the setting, where its value came from
        and why it is wrong. ``--help`` and unknown flags exit through argparse.
        """
        environ = os.environ if environ is None else environ
        flags = vars(build_parser().parse_args(argv))
        ts_config = _read_ts_config(flags.get("ts_config") or environ.get("TS_CONFIG_FILE"),
                                    environ)
        values: dict[str, t.Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS:
            raw, source = flags.get(setting.name), "flag"
            if raw is None and setting.env and setting.env in environ:
                raw, source = environ[setting.env], "env"
            if raw is None and ts_config is not None and setting.name in ts_config.values:
                raw, key = ts_config.values[setting.name]
                source = f"ts-config:{key}"
            if raw is None:
                values[setting.name], sources[setting.name] = setting.default_value(), "default"
                continue
            if isinstance(raw, bool):  # a --switch / --no-switch flag
                values[setting.name], sources[setting.name] = raw, source
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except ValueError as exc:
                where = setting.flag if source == "flag" else setting.env
                if ts_config is not None and source.startswith("ts-config:"):
                    raise ConfigError(f"invalid {source[10:]}={raw!r} in "  # the file's key
                                      f"{ts_config.path}: {exc}") from None
                raise ConfigError(f"invalid {where}={raw!r}: {exc}") from None
            sources[setting.name] = source
        more = {} if ts_config is None else {"archive_settings": ts_config.archive_settings,
                                             "ts_ignored": ts_config.ignored}
        config = cls(**values, sources=sources, **more)
        config._check()
        return config

    def _check(self) -> None:
        """Checks that look at the filesystem or at several settings."""
        for pattern in self.allowed_url_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{self.where('allowed_urls')}: {pattern!r} is not a "
                                  f"regular expression: {exc}") from None
        if self.management_port is not None:
            if self.model_store is None and not self.model_dir.endswith(".mar") and not \
                    os.path.isfile(os.path.join(self.model_dir, "MAR-INF", "MANIFEST.json")):
                raise ConfigError(f"{self.where('management_port')}: the management API "
                                  f"serves TorchServe model archives: set --model-store (or "
                                  f"a .mar as --model-dir)")
            if self.management_port in (self.port, self.metrics_port):
                raise ConfigError(f"{self.where('management_port')}={self.management_port} "
                                  f"is taken by another of the server's ports")
            self._needs("management", "management_port", "the management API")
        if self.model_store is not None:
            self._needs("model_store", "model_store", "a model store (a single .mar as "
                        "--model-dir runs on any)")
            if self.multi_model:
                raise ConfigError(f"{self.where('model_store')} and "
                                  f"{self.where('multi_model')}: a model store's archives are "
                                  f"loaded at start; choose one")
            if not os.path.isdir(self.model_store):
                raise ConfigError(f"model store {self.model_store} "
                                  f"({self.where('model_store')}) is not a directory")
            _check_readable(self.model_store, self.where("model_store"))
            return self._check_ports()
        _check_reachable(self.model_dir, self.where("model_dir"))
        if self.model_dir.endswith(".mar") and os.path.isfile(self.model_dir):
            return self._check_ports()  # one model archive (read at assembly)
        if not os.path.isdir(self.model_dir) and not self.multi_model:
            raise ConfigError(
                f"model directory {self.model_dir} does not exist or is not a directory "
                f"(set --model-dir or SM_MODEL_DIR)"
            )
        if os.path.isdir(self.model_dir):
            _check_readable(self.model_dir, self.where("model_dir"))
        self._check_ports()

    def _check_ports(self) -> None:
        """Checks of the ports and engines, whatever serves the model."""
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ConfigError(f"{self.where('metrics_port')}={self.metrics_port} is the main "
                              f"port; leave it unset to serve /metrics there")
        if self.safe_port_range is not None and self.metrics_port:
            first, last = self.safe_port_range
            if not first <= self.metrics_port <= last:
                raise ConfigError(
                    f"{self.where('metrics_port')}={self.metrics_port} is outside "
                    f"{self.where('safe_port_range')}={first}-{last}, the ports this container "
                    f"may listen on besides the main one (set it inside, or to auto)")
        if self.safe_port_range is not None and self.ray_address is None and \
                "confined_ports" not in ENGINES[self.engine].carries:
            raise ConfigError(
                f"{self.where('safe_port_range')} is set: the {self.engine} engine's local "
                f"instance listens on ports of its own (Ray's 6379, its workers') that cannot "
                f"be kept inside it; use {self._engines_with('confined_ports')}, or "
                f"RAY_ADDRESS of a cluster outside")
        if self.multi_model:
            self._needs("multi_model", "multi_model", "multi-model endpoints (each process "
                        "must hold the models it was asked to load, and the others too)")
        if self.metrics_port is not None:
            self._needs("metrics_port", "metrics_port", "/metrics on a port of its own")
        if self.repository_api != "off" and not self.multi_model and self.model_store is None:
            raise ConfigError(f"{self.where('repository_api')}={self.repository_api}: the "
                              f"repository extension loads models by name from a repository: "
                              f"set --model-store or --multi-model")
        if self.grpc_port is not None:
            self._needs("grpc", "grpc_port", "the Open Inference Protocol over gRPC")
            if self.grpc_port in (self.port, self.metrics_port, self.management_port):
                raise ConfigError(f"{self.where('grpc_port')}={self.grpc_port} is taken by "
                                  f"another of the server's ports")
            if self.safe_port_range is not None and not \
                    self.safe_port_range[0] <= self.grpc_port <= self.safe_port_range[1]:
                raise ConfigError(f"{self.where('grpc_port')}={self.grpc_port} is outside "
                                  f"{self.where('safe_port_range')}, the ports this container "
                                  f"may listen on besides the main one")
        if self.ray_max_replicas is not None and self.ray_max_replicas < self.ray_replicas:
            raise ConfigError(f"{self.where('ray_max_replicas')}={self.ray_max_replicas} is "
                              f"fewer than the {self.ray_replicas} replicas "
                              f"({self.where('ray_replicas')}) autoscaling keeps at least")

    def _needs(self, capability: str, name: str, what: str) -> None:
        """Refuse setting ``name`` (it asks for ``what``) on an engine that cannot carry
        ``capability``."""
        if capability not in ENGINES[self.engine].carries:
            raise ConfigError(f"{self.where(name)}: {what}: only on "
                              f"{self._engines_with(capability)}, not on the {self.engine} "
                              f"engine")

    @staticmethod
    def _engines_with(capability: str) -> str:
        names = [name for name, engine in ENGINES.items() if capability in engine.carries]
        return " or ".join(f"the {name} engine" for name in names) or "no engine"

    def by_name(self) -> dict[str, t.Any]:
        """Every setting's value by name (what a framework handler reads its own from)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def where(self, name: str) -> str:
        """How a setting was given, for messages: ``--port``, ``SM_MODEL_DIR``, ``default``,
        or ``inference_address in config.properties``."""
        setting, source = _BY_NAME[name], self.sources.get(name, "default")
        if source.startswith("ts-config:"):
            return f"{source[10:]} in {self.ts_config}"
        return {"flag": setting.flag, "env": setting.env or setting.flag}.get(source, "default")


#: Every setting, in the order of the fields: ``serve --help`` and the settings table.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(name=f.name, **f.metadata["setting"]) for f in dataclasses.fields(Config)
    if "setting" in f.metadata)
_BY_NAME = {s.name: s for s in SETTINGS}


#: Entries of a model directory looked at for unreadable ones, at most (a model is a few
#: files; a directory of a million images is not walked whole at every start).
READABLE_CHECK_LIMIT = 10_000


def _owner(path: str) -> str:
    stat = os.stat(path)
    try:
        user = pwd.getpwuid(stat.st_uid).pw_name
    except KeyError:
        user = "?"
    try:
        group = grp.getgrgid(stat.st_gid).gr_name
    except KeyError:
        group = "?"
    return (f"owned by uid {stat.st_uid} ({user}), gid {stat.st_gid} ({group}), "
            f"mode {stat.st_mode & 0o7777:04o}")


def _refuse_unreadable(path: str, what: str, where: str) -> t.NoReturn:
    uid, gid = os.getuid(), os.getgid()
    hint = ("make it readable by this uid (chmod -R a+rX, or chown; on Kubernetes set "
            "fsGroup to the pod's group)")
    if uid != 0:
        hint += (", or, where the container is started as root (SageMaker), set "
                 "SERVING_RUN_AS=root to serve as root: the model's code then runs with "
                 "root's rights")
    raise ConfigError(f"{what} {path} is not readable by uid {uid} gid {gid} (groups "
                      f"{','.join(map(str, os.getgroups())) or 'none'}): it is "
                      f"{_owner(path)}; {hint} [model directory from {where}]")


def _check_reachable(model_dir: str, where: str) -> None:
    """A model directory under a directory this process may not enter looks missing:
    name the directory that stops it instead."""
    try:
        os.stat(model_dir)
    except PermissionError:
        parent = os.path.dirname(model_dir)
        ancestors = []
        while parent and parent not in ancestors:
            ancestors.insert(0, parent)
            parent = os.path.dirname(parent)
        for directory in ancestors:
            if not os.access(directory, os.X_OK):
                _refuse_unreadable(directory, "the directory", where)
    except OSError:
        pass  # missing: said next


def _check_readable(model_dir: str, where: str) -> None:
    """Refuse a model directory this process cannot read, naming the path, its owner and
    mode, and the ways out, instead of a PermissionError traceback from model_fn."""
    if not os.access(model_dir, os.R_OK | os.X_OK):
        _refuse_unreadable(model_dir, "the model directory", where)
    if os.getuid() == 0:  # root reads every file; only pseudo-files (/proc) say otherwise
        return
    seen = 0
    for directory, subdirectories, files in os.walk(model_dir):
        for name in subdirectories:
            path = os.path.join(directory, name)
            if not os.access(path, os.R_OK | os.X_OK):
                _refuse_unreadable(path, "the directory", where)
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.access(path, os.R_OK):
                _refuse_unreadable(path, "the file", where)
        seen += len(subdirectories) + len(files)
        if seen > READABLE_CHECK_LIMIT:
            return


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` command line, generated from :data:`SETTINGS`."""
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a model over HTTP with the SageMaker hosting contract: "
        "GET /ping, POST /invocations, GET /execution-parameters. "
        "Each option may also be set by the environment variable named in its help; "
        "a flag wins over the variable.",
    )
    for s in SETTINGS:
        help_text = f"{s.help} [env {s.env}; default {s.default_text}]"
        if s.switch:
            parser.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(s.flag, dest=s.name, default=None, metavar=s.metavar,
                                help=help_text)
    return parser


def settings_table() -> str:
    """The settings table of docs/reference/settings.md, in Markdown."""
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = f"`{s.flag}` / `--no-{s.flag[2:]}`" if s.switch else f"`{s.flag}`"
        rows.append(f"| {flag} | `{s.env}` | {s.default_text} | {s.help} |")
    return "\n".join(rows)


TABLE_START = ("<!-- options table: generated by `python -m serving.config --write "
               "docs/reference/settings.md` -->")
TABLE_END = "<!-- end of options table -->"


def write_table(path: str) -> None:
    """Replace the options table between the markers in ``path``
    (docs/reference/settings.md)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if TABLE_START not in text or TABLE_END not in text:  # else it would add a second table
        raise SystemExit(f"{path} has no options table markers ({TABLE_START} … {TABLE_END})")
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{TABLE_START}\n{settings_table()}\n{TABLE_END}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_table(sys.argv[2])
    else:
        print(settings_table())
