"""Assembly: from the settings to the parts of a server, with no HTTP.

Every host builds from here (``serve`` on gunicorn, the Ray Serve replicas,
batch transform): the device plan, the content handlers, the user's code, the
models by name, the metrics. What each host
adds is how requests reach :meth:`serving.contract.pipeline.Pipeline.invoke`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing as t

from serving.assembly.devices import DevicePlan
from serving.config import Config, cpu_count
from serving.contract.models import DEFAULT_MODEL, ModelRepository, Models
from serving.contract.pipeline import Pipeline
from serving.runtime.batching import Batcher
from serving.runtime.metrics import Metrics

if t.TYPE_CHECKING:
    from handlers.content import Registry
    from serving.assembly.mar import Archive, Manifest
    from serving.assembly.user_code import UserCode

__all__ = ["Assembly", "DEFAULT_MODEL", "THREAD_VARIABLES", "archive_batching", "assemble",
           "assemble_loaded"]

log = logging.getLogger("serving")

#: Thread-count variables of the math libraries frameworks use, read when each starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_CPU_WORKER_NTHREADS")


@dataclasses.dataclass
class Assembly:
    """A server's parts, ready for a host."""

    #: The settings as the device plan left them (workers, preload).
    config: Config
    plan: DevicePlan
    #: The models the server holds, by name: :data:`DEFAULT_MODEL` alone, or (multi-model)
    #: those loaded at run time.
    models: Models
    #: ``None`` when metrics are off.
    metrics: Metrics | None

    @property
    def default(self) -> Pipeline:
        return self.models.default


def _set_thread_variables(threads_per_worker: int) -> None:
    """Workers share the CPUs: each math library gets about cores / workers threads.

    Set before any framework is imported (they read these when they start), unless
    the user set them.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads_per_worker))


def memory_bytes() -> int:
    """This machine's memory, or the container's limit when it has a lower one (cgroup v2)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def assemble(config: Config, metrics_dir: str | None = None,
             models_dir: str | None = None,
             batcher_class: type[Batcher] = Batcher) -> Assembly:
    """Plan the devices, import the user's code, resolve the hosting functions, and (with
    ``config.preload``) load the model.

    :param metrics_dir: the multiprocess metrics directory, made ready by the caller.
    :param models_dir: multi-model: an empty directory for the loaded models' records,
        made (and removed) by the caller.
    :param batcher_class: what gathers requests into batches, when batching is on.
    :raises serving.errors.StartupError: settings or user code that cannot serve.
    :raises handlers.content.PluginError: a content-handler plugin that cannot load.
    Any other exception comes from loading the model (``model_fn``).
    """
    # Imported here so that `serve --help` and setting errors stay fast.
    from handlers.content import default_registry
    from handlers.content.json import write_float32_as
    from serving.assembly.devices import gpu_count, plan_devices
    from serving.assembly.user_code import (
        install_requirements,
        load_user_code,
        locate_user_script,
        requirements_target,
    )

    from serving.assembly.mar import archives_of, is_archive, remove_unpacked, serves_archives

    archives = archives_of(config)  # TorchServe model archives: --model-store, a .mar
    if serves_archives(config):
        config = _with_archive_settings(config, archives)
    plan = plan_devices(config, gpu_count(), cpu_count())
    # GPU serving loads per worker after fork, one worker per GPU by default; a
    # multi-model server loads in its workers, at run time.
    config = dataclasses.replace(config, workers=plan.workers,
                                 preload=config.preload and plan.kind == "cpu"
                                 and not config.multi_model)
    log.info("devices: %s, %d worker(s), %d thread(s) each%s", plan.kind, plan.workers,
             plan.threads_per_worker, f", GPUs {list(plan.gpus)}" if plan.gpus else "")
    _set_thread_variables(plan.threads_per_worker)
    write_float32_as(config.json_float32)  # every JSON answer: jsonlines and streams too
    base = default_registry()  # built-in handlers and installed plugins, once
    base.limit_decoded(config.max_decoded_bytes)  # and every layer's handlers too
    if serves_archives(config):
        return _assemble_archives(config, plan, archives, base, metrics_dir, models_dir,
                                  batcher_class)
    script = locate_user_script(config)
    code = None
    if script is not None:
        if config.install_requirements:
            install_requirements(script)
        code = load_user_code(script, base)
    elif not config.multi_model:
        log.info("no user script found; serving with the default handlers")

    def build(model_dir: str, code: UserCode | None = code, owns: bool = False) -> Pipeline:
        """``owns``: the model's own code, released with it (multi-model)."""
        return Pipeline.from_module(
            code.module if code is not None else None,
            code.registry if code is not None else base, model_dir=model_dir,
            default_accept=config.default_accept, framework=config.framework,
            framework_settings=config.by_name(), debug_errors=config.debug_errors,
            code=code if owns else None, version=config.model_version,
        )

    if config.multi_model:
        if models_dir is None:
            raise ValueError("a multi-model server needs a directory for its models' records")
        if config.batching:
            log.warning("SERVING_MAX_BATCH_SIZE is set, but a multi-model server does not "
                        "batch: requests are not batched")

        def build_model(model_dir: str, token: str, first: bool, name: str) -> Pipeline:
            """The model's own code/inference.py in a namespace of its own, else the
            container's script. ``first``: the load POST /models asked for; the other
            workers' loads of it find its requirements installed."""
            if is_archive(model_dir):  # a TorchServe model archive, unpacked by resolve
                return build_archive(model_dir, token, first, name)
            own = os.path.join(model_dir, "code", "inference.py")
            if not os.path.isfile(own):
                return build(model_dir)
            if config.install_requirements and first:
                install_requirements(own)
            model_code = load_user_code(own, base, private=f"serving_model_{token}")
            try:
                return build(model_dir, model_code, owns=True)
            except BaseException:
                model_code.release()
                raise

        build_archive = _archive_builder(config, base, batcher_class)
        if config.install_requirements:
            requirements_target()  # on every worker's sys.path, where one is needed
        budget = _models_budget(config, plan)
        log.info("multi-model: models are loaded through POST /models; budget %.0f MiB",
                 budget / 2**20)
        # Models may bring their own input_fn: the first few content types seen are labelled.
        metrics = Metrics(metrics_dir) if config.metrics else None
        return Assembly(config=config, plan=plan, metrics=metrics,
                        models=ModelRepository(models_dir, build_model, budget,
                                               lock_timeout=config.deadline_seconds,
                                               resolve=_archive_resolver(config),
                                               forget=remove_unpacked))
    pipeline = build(config.model_dir)
    metrics = Metrics(metrics_dir, content_types=pipeline.input_types) if config.metrics \
        else None
    if config.batching:
        pipeline.enable_batching(config.max_batch_size, config.max_batch_delay_ms / 1000,
                                 batcher_class)
    if config.preload:
        pipeline.load_model()
        if metrics is not None and pipeline.load_seconds is not None:
            metrics.model_load_seconds.set(pipeline.load_seconds)
        if config.batching and not pipeline.predicts_batches:
            # Nothing will be batched (the load said why): the worker keeps the threads it
            # has without batching, not the 2 × batch size that keep batches full.
            config = dataclasses.replace(config, max_batch_size=1)
            pipeline.batcher = None
    return Assembly(config=config, plan=plan, models=Models({DEFAULT_MODEL: pipeline}),
                    metrics=metrics)


#: Settings a model archive's config YAML may give, when the operator did not.
_ARCHIVE_SERVER_SETTINGS = ("workers", "request_timeout")


def _with_archive_settings(config: Config, archives: list[Archive]) -> Config:
    """The server-wide settings the archives' config YAMLs give (``minWorkers``,
    ``responseTimeout``: the largest of them), unless set by flag or variable; and the
    largest batch size among them, which sizes each worker's threads."""
    changes: dict[str, t.Any] = {}
    for name in _ARCHIVE_SERVER_SETTINGS:
        values = [a.settings[name] for a in archives if name in a.settings]
        if values and config.sources.get(name, "default") == "default":
            changes[name] = max(values)
    sizes = [archive_batching(config, archive.settings)[0] for archive in archives]
    changes["max_batch_size"] = max(sizes, default=config.max_batch_size)
    return dataclasses.replace(config, **changes)


def archive_batching(config: Config, settings: dict[str, t.Any]) -> tuple[int, float]:
    """An archive's batch size and delay (ms): ``--max-batch-size`` and
    ``--max-batch-delay-ms`` when set, else its config's ``batchSize`` (1: no batching)
    and ``maxBatchDelay``."""
    explicit = config.sources.get("max_batch_size", "default") != "default"
    size = config.max_batch_size if explicit else settings.get("max_batch_size", 1)
    explicit = config.sources.get("max_batch_delay_ms", "default") != "default"
    delay = config.max_batch_delay_ms if explicit \
        else settings.get("max_batch_delay_ms", config.max_batch_delay_ms)
    return size, delay


def _archive_pipeline(config: Config, name: str, directory: str, manifest: Manifest,
                      settings: dict[str, t.Any], base: Registry, private: str | None,
                      batcher_class: type[Batcher]) -> Pipeline:
    """The (unloaded) pipeline of one TorchServe model archive served as ``name``, run by
    its handler (:mod:`serving.assembly.torchserve_handler`); ``private``: its modules' own
    package."""
    from serving.assembly.torchserve_handler import hosting_module

    size, delay = archive_batching(config, settings)
    module = hosting_module(name, directory, manifest, base, batch_size=size,
                            max_form_bytes=config.max_payload_bytes,
                            max_decoded_bytes=config.max_decoded_bytes, private=private,
                            debug_errors=config.debug_errors)
    pipeline = Pipeline.from_module(module, base, model_dir=directory,  # type: ignore[arg-type]
                                    default_accept=config.default_accept, framework="none",
                                    debug_errors=config.debug_errors, archive=manifest,
                                    code=module)  # release(): the handler's modules
    if size > 1:
        pipeline.enable_batching(size, delay / 1000, batcher_class)
    log.info("model archive %s: %s, handler %s%s", name, directory,
             manifest.handler, f", batches of up to {size}" if size > 1 else "")
    return pipeline


def _install_archive_requirements(config: Config, directory: str, manifest: Manifest) -> None:
    from serving.assembly.user_code import install_requirements_file

    if manifest.requirements_file and config.install_requirements:
        install_requirements_file(os.path.join(directory, manifest.requirements_file))


def _assemble_archives(config: Config, plan: DevicePlan, archives: list[Archive],
                       base: Registry, metrics_dir: str | None, models_dir: str | None,
                       batcher_class: type[Batcher]) -> Assembly:
    """A server of TorchServe model archives, each by its name: fixed at start, or (with
    --management-port) in a model repository that loads and unloads them at run time."""
    metrics = Metrics(metrics_dir) if config.metrics else None
    default = archives[0].name if len(archives) == 1 else None
    if config.management_port is None:
        pipelines = {}
        for index, archive in enumerate(archives):
            _install_archive_requirements(config, archive.directory, archive.manifest)
            # Several archives' modules of the same name (handler.py, model.py) each stay
            # their own.
            pipelines[archive.name] = _archive_pipeline(
                config, archive.name, archive.directory, archive.manifest, archive.settings, base,
                None if len(archives) == 1 else f"serving_archive_{index}", batcher_class)
        models = Models(pipelines, default=default)
        if config.preload:
            for pipeline in pipelines.values():
                pipeline.load_model()
                if metrics is not None and pipeline.load_seconds is not None:
                    metrics.model_load_seconds.set(pipeline.load_seconds)
        return Assembly(config=config, plan=plan, models=models, metrics=metrics)
    from serving.assembly.mar import remove_unpacked

    if models_dir is None:
        raise ValueError("a management API needs a directory for its models' records")
    repository = ModelRepository(models_dir, _archive_builder(config, base, batcher_class),
                                 _models_budget(config, plan),
                                 lock_timeout=config.deadline_seconds,
                                 resolve=_archive_resolver(config), forget=remove_unpacked,
                                 default=default)
    for archive in archives:
        if config.preload:  # loaded here: the workers share it, as a preloaded model
            repository.load(archive.name, archive.directory, archive.source)
        else:
            _install_archive_requirements(config, archive.directory, archive.manifest)
            repository.register(archive.name, archive.directory, archive.source)
    repository.startup = tuple(archive.name for archive in archives)
    log.info("model archives: %s; the management API on port %d",
             ", ".join(repository.startup) or "none yet", config.management_port)
    return Assembly(config=config, plan=plan, models=repository, metrics=metrics)


def _archive_builder(config: Config, base: Registry,
                     batcher_class: type[Batcher]
                     ) -> t.Callable[[str, str, bool, str], Pipeline]:
    """How a model repository builds an archive's pipeline (see ModelRepository)."""
    from serving.assembly.mar import archive_settings, read_manifest

    def build_archive(directory: str, token: str, first: bool, name: str) -> Pipeline:
        manifest = read_manifest(directory)
        if first:
            _install_archive_requirements(config, directory, manifest)
        return _archive_pipeline(config, name, directory, manifest,
                                 archive_settings(config, name, directory, manifest), base,
                                 f"serving_model_{token}", batcher_class)

    return build_archive


def _archive_resolver(config: Config) -> t.Callable[[str], str]:
    """A load's url as the directory to load: a ``.mar`` unpacked (a 400 when it cannot
    be), anything else as it is."""
    from serving import errors
    from serving.assembly.mar import ArchiveError, is_archive, open_archive

    def resolve(url: str) -> str:
        if not (os.path.isfile(url) and is_archive(url)):
            return url
        try:
            return open_archive(url, int(config.archive_max_mb * 2**20))[0]
        except ArchiveError as exc:
            raise errors.BadRequest(str(exc)) from None

    return resolve


def _models_budget(config: Config, plan: DevicePlan) -> int:
    """The most a model repository's models may add up to, in bytes."""
    return (int(config.models_memory_mb * 2**20) if config.models_memory_mb is not None
            else memory_bytes() // 2 // plan.workers)


def assemble_loaded(config: Config, threads: int, metrics_dir: str | None = None,
                    batcher_class: type[Batcher] = Batcher) -> Assembly:
    """A server of one process that never forks (a Ray Serve replica, a batch transform):
    assembled, placed on its device, its model loaded.

    ``config.device`` decides the device as for ``serve`` (a Ray replica sees only the GPUs
    Ray gave it); ``threads``: the CPU threads its math libraries use.
    """
    config = dataclasses.replace(config, workers=1, preload=False, multi_model=False)
    assembly = assemble(config, metrics_dir, batcher_class=batcher_class)
    pipeline = assembly.default
    assembly.models.enter_worker(0, assembly.plan.device_for(0), threads)
    pipeline.load_model()
    if assembly.metrics is not None and pipeline.load_seconds is not None:
        assembly.metrics.model_load_seconds.set(pipeline.load_seconds)
    return assembly
