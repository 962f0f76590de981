"""The models a server holds, by name.

A single-model server holds one :class:`~serving.contract.pipeline.Pipeline`, named
``default`` (:class:`Models`). A multi-model server (``SAGEMAKER_MULTI_MODEL=true``)
holds what ``POST /models`` loaded (:class:`ModelRepository`): the same pipeline,
one per name.

How every worker answers for every model. gunicorn spreads requests over worker
processes, so a ``POST /models`` reaches one of them. The loaded models' records are
shared by every worker (:mod:`~serving.contract.model_store`: a file per model and a
generation counter in shared memory). Each request reads the generation (no system
call); when it moved, the worker reads the records again, drops the models no longer
listed (or loaded again since, under another token), and loads a listed model it lacks
on first use. A worker that restarts is forked with nothing loaded and catches up the
same way.

Loads and unloads are serialised across workers by the store's ``flock``; invocations
take no lock. A load that does not fit the memory budget unloads the least recently
used models first (:mod:`~serving.contract.model_budget`; a model's record is touched,
at most once a second per worker, when it answers), and one that would not fit alone
is a 507. Failures map to our errors here: a model that cannot serve is a 400, a
``model_fn`` that raises a 500 naming the stage.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gc
import logging
import os
import re
import threading
import time
import typing as t

from serving import errors
from serving.contract import model_budget
from serving.contract.model_store import Entry, ModelStore
from serving.contract.pipeline import Pipeline

__all__ = ["DEFAULT_MODEL", "ModelRepository", "Models", "directory_bytes", "valid_model_name"]

log = logging.getLogger(__name__)

#: The name of the one model of a single-model server.
DEFAULT_MODEL = "default"
#: What a model name may be: SageMaker's names, and TargetModel file names such as
#: ``model-1.tar.gz`` (a name is one URL path segment, and goes into logs).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,254}")
#: How often one worker records that a model answered (its least-recently-used time).
TOUCH_SECONDS = 1.0
#: ``GET /models``: names per page unless the caller asks for another size, and the most.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A model directory with more files than this is refused (400), before it is walked whole.
MAX_MODEL_FILES = 10_000


def valid_model_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def directory_bytes(path: str, limit: int | None = None) -> int:
    """The size of the files under ``path``: what a model costs in the memory budget.

    :param limit: stop counting past this many bytes (a url of ``/`` must not walk the
        whole filesystem): the answer is then only known to be more.
    """
    total = count = 0
    for root, _, files in os.walk(path):
        count += len(files)
        if count > MAX_MODEL_FILES:
            raise errors.BadRequest(f"{path} holds more than {MAX_MODEL_FILES} files: not a "
                                    f"model directory")
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
            if limit is not None and total > limit:
                return total
    return total


def versioned(models: Models | ModelRepository, name: str, version: str | None) -> Pipeline:
    """Model ``name``, which must be of ``version`` when one is named (TorchServe's and
    KServe's ``/<name>/<version>`` routes); :class:`~serving.errors.NotFound` if it is not
    loaded, or is not that version."""
    pipeline = models.get(name)
    if version is not None and pipeline.version != version:
        raise errors.NotFound(f"model {name} has no version {version}")
    return pipeline


class Models:
    """A single-model server's models: one pipeline per name, all loaded at start-up."""

    #: Whether models come and go at run time (the /models routes).
    multi = False
    #: Models every worker loads when it starts, before /ping answers (a repository's).
    startup: tuple[str, ...] = ()

    def __init__(self, pipelines: t.Mapping[str, Pipeline],
                 default: str | None = DEFAULT_MODEL) -> None:
        self._pipelines = dict(pipelines)
        #: The model /invocations answers with; ``None``: several, none of them the
        #: default (a model store's archives, each called by its name).
        self.default_name = default
        #: Called on each pipeline built after start-up (multi-model; the metrics hook in).
        self.on_build: t.Callable[[Pipeline], None] | None = None

    def get(self, name: str) -> Pipeline:
        """The pipeline of model ``name``; :class:`~serving.errors.NotFound` if none."""
        try:
            return self._pipelines[name]
        except KeyError:
            raise errors.NotFound(f"model {name} is not loaded") from None

    @property
    def default(self) -> Pipeline:
        if self.default_name is None:
            raise errors.NotFound(
                f"this server holds several models ({', '.join(sorted(self._pipelines))}): "
                f"name one, as in POST /predictions/<name>")
        return self.get(self.default_name)

    def describe(self, name: str) -> dict[str, str]:
        """``GET /models/<name>``, in the SageMaker contract's names (and a model
        archive's version)."""
        pipeline = self.get(name)
        described = {"modelName": name, "modelUrl": pipeline.context.model_dir}
        if pipeline.archive is not None and pipeline.archive.version is not None:
            described["modelVersion"] = pipeline.archive.version
        return described

    def _listing(self) -> dict[str, dict[str, str]]:
        return {name: self.describe(name) for name in self._pipelines}

    def page(self, token: str | None, size: int) -> dict[str, t.Any]:
        """``GET /models``: names in order from the one ``token`` names, ``size`` of them,
        and ``nextPageToken`` when more follow."""
        listing = self._listing()
        start = ""
        if token:
            try:
                start = base64.b64decode(token.encode("ascii"), altchars=b"-_",
                                         validate=True).decode("utf-8")
            except (ValueError, binascii.Error, UnicodeError):
                raise errors.BadRequest("next_page_token is not one this server gave") from None
        names = sorted(n for n in listing if n >= start)
        body: dict[str, t.Any] = {"models": [listing[n] for n in names[:size]]}
        if len(names) > size:
            body["nextPageToken"] = base64.urlsafe_b64encode(
                names[size].encode("utf-8")).decode("ascii")
        return body

    def loaded(self) -> list[Pipeline]:
        """The pipelines this process holds now."""
        return list(self._pipelines.values())

    @property
    def ready(self) -> bool:
        """Whether this process can answer (a single model: once it is loaded)."""
        return all(p.ready for p in self._pipelines.values())

    def enter_worker(self, index: int, device: str, threads: int) -> None:
        for pipeline in self._pipelines.values():
            pipeline.enter_worker(index, device, threads)


@dataclasses.dataclass
class _Held:
    """A model this worker holds: its pipeline, and when it last recorded a use."""

    entry: Entry
    pipeline: Pipeline
    touched: float = 0.0


class ModelRepository(Models):
    """A multi-model server's models, shared by its workers (see the module's text).

    Made in the gunicorn master before fork; it loads nothing there.

    :param directory: where the models' files go; made and removed by the caller.
    :param build: makes the (unloaded) pipeline of a model directory: its own
        ``code/inference.py``, else the container's, else the default handlers. Called
        with the directory, the load's token (its code's private package is named by
        it), whether this is the load ``POST /models`` asked for (``False``: another
        worker's, or a restarted one's, first use of it), and the model's name.
    :param budget_bytes: the most the loaded models' files may add up to.
    :param lock_timeout: how long a load or unload waits for the one in progress, in
        seconds; past it, 503.
    """

    multi = True

    def __init__(self, directory: str, build: t.Callable[[str, str, bool, str], Pipeline],
                 budget_bytes: int, lock_timeout: float = 60.0, *,
                 resolve: t.Callable[[str], str] | None = None,
                 forget: t.Callable[[str], None] | None = None,
                 default: str | None = None) -> None:
        super().__init__({}, default=default)
        #: Turns a load's url into the directory to load (a model archive unpacked), and
        #: removes what it made once that directory is no longer needed (the load failed,
        #: or the model was unloaded).
        self.resolve, self.forget = resolve, forget
        #: Models every worker loads when it starts (a model store's archives), before
        #: /ping answers.
        self.startup: tuple[str, ...] = ()
        self.directory = directory
        self.lock_timeout = lock_timeout
        self.build = build
        self.budget_bytes = budget_bytes
        # Shared with every worker forked from here.
        self.store = ModelStore(directory, lock_timeout)
        self._seen = -1
        self._entries: dict[str, Entry] = {}
        self._held: dict[str, _Held] = {}
        self._sync_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._worker: tuple[int, str, int] | None = None

    # -- what every host asks --------------------------------------------------------

    @property
    def ready(self) -> bool:
        # SageMaker health-checks a multi-model container before it loads any model; a
        # model store's archives are loaded first.
        if not self.startup:
            return True
        self.sync()  # one read of shared memory; a startup model unloaded since is not waited for
        return all(name in self._held for name in self.startup if name in self._entries)

    def loaded(self) -> list[Pipeline]:
        return [held.pipeline for held in list(self._held.values())]

    def enter_worker(self, index: int, device: str, threads: int) -> None:
        self._worker = (index, device, threads)
        for held in self._held.values():  # loaded in the master before fork (preload)
            held.pipeline.enter_worker(index, device, threads)

    def load_startup(self) -> None:
        """Load the :attr:`startup` models in this worker (those the master did not)."""
        for name in self.startup:
            self.get(name)

    def get(self, name: str) -> Pipeline:
        """The pipeline of ``name``, loaded in this worker on its first use here."""
        self.sync()
        entry = self._entries.get(name)
        if entry is None:
            raise errors.NotFound(f"model {name} is not loaded")
        held = self._held.get(name)
        if held is None or held.entry.token != entry.token:
            held = self._hold(entry)
        now = time.monotonic()
        if now - held.touched >= TOUCH_SECONDS:
            held.touched = now
            self.store.touch(name)  # its least-recently-used time, for every worker
        return held.pipeline

    def describe(self, name: str) -> dict[str, str]:
        self.sync()
        entry = self._entries.get(name)
        if entry is None:
            raise errors.NotFound(f"model {name} is not loaded")
        return entry.describe()

    def _listing(self) -> dict[str, dict[str, str]]:
        self.sync()
        return {name: entry.describe() for name, entry in self._entries.items()}

    # -- loading and unloading (POST and DELETE /models) -------------------------------

    def load(self, name: str, url: str, source: str | None = None) -> Entry:
        """Load the model in directory ``url`` as ``name``, here and (on first use) in
        every other worker.

        :raises errors.Conflict: 409, ``name`` is loaded already.
        :raises errors.InsufficientStorage: 507, the model alone is over the budget.
        :raises errors.BadRequest: no such directory, or nothing there to serve.
        """
        if self.resolve is None:
            return self._load_directory(name, url, source)
        directory = self.resolve(url)
        try:
            return self._load_directory(name, directory,
                                        source or (url if directory != url else None))
        except BaseException:
            if directory != url and self.forget is not None:
                self.forget(directory)
            raise

    def _load_directory(self, name: str, url: str, source: str | None) -> Entry:
        if not os.path.isdir(url):
            raise errors.BadRequest(f"url {url} is not a directory")
        with self.store.exclusive():
            size = self._admit(name, url)
            self._make_room(size)
            entry = Entry(name=name, url=url, bytes=size, token=os.urandom(8).hex(),
                          source=source)
            held = self._load(entry, first=True)
            try:
                self._write(entry)
            except BaseException:
                held.pipeline.release()
                raise
            self._held[name] = held
            self.store.bump()
        log.info("model %s loaded from %s (%s)", name, url, _mib(size))
        return entry

    def _admit(self, name: str, url: str) -> int:
        """The size of model directory ``url``, to be recorded as ``name`` (under the
        store's lock, the records read again).

        :raises errors.Conflict: ``name`` is recorded already.
        :raises errors.InsufficientStorage: the model alone is over the budget.
        """
        self.sync()
        if name in self._entries:
            raise errors.Conflict(f"model {name} is loaded already")
        size = directory_bytes(url, limit=self.budget_bytes)
        if not model_budget.fits_alone(size, self.budget_bytes):
            raise errors.InsufficientStorage(
                f"model {name} takes more than the whole budget of "
                f"{_mib(self.budget_bytes)} (SERVING_MODELS_MEMORY_MB)")
        return size

    def register(self, name: str, url: str, source: str | None = None) -> Entry:
        """Record the model directory ``url`` as ``name`` for every worker to load on its
        own (the master, when it does not preload), loading nothing here.

        :raises errors.Conflict: ``name`` is recorded already.
        :raises errors.InsufficientStorage: the model alone is over the budget.
        """
        with self.store.exclusive():
            size = self._admit(name, url)
            entry = Entry(name=name, url=url, bytes=size, token=os.urandom(8).hex(),
                          source=source)
            self._write(entry)
            self.store.bump()
        return entry

    def entry(self, name: str) -> Entry:
        """The record of ``name``; :class:`~serving.errors.NotFound` if not loaded."""
        self.sync()
        entry = self._entries.get(name)
        if entry is None:
            raise errors.NotFound(f"model {name} is not loaded")
        return entry

    def held(self, name: str) -> bool:
        """Whether this worker holds ``name`` loaded now."""
        return name in self._held

    def unload(self, name: str) -> None:
        """Unload ``name`` from every worker; :class:`~serving.errors.NotFound` if not loaded."""
        with self.store.exclusive():
            self.sync()
            entry = self._entries.get(name)
            if entry is None:
                raise errors.NotFound(f"model {name} is not loaded")
            self._remove(name)
            self.store.bump()
        self.sync()
        if self.forget is not None:
            self.forget(entry.url)
        log.info("model %s unloaded", name)

    def _make_room(self, size: int) -> None:
        """Unload the least recently used models until ``size`` more bytes fit the budget
        (the caller holds the exclusive lock)."""
        victims = model_budget.to_unload({n: e.bytes for n, e in self._entries.items()},
                                         self.store.last_used, size, self.budget_bytes)
        if not victims:
            return
        try:
            for victim in victims:
                self._remove(victim)
                log.info("model %s unloaded to make room (least recently used)", victim)
        finally:
            self.store.bump()  # now, not after the load: it may fail, and these are gone anyway

    # -- this worker's copies ------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with loads and unloads other workers did: one read of shared memory
        when nothing changed."""
        if self.store.generation == self._seen:
            return
        with self._sync_lock:
            generation = self.store.generation
            if generation == self._seen:
                return
            entries = self.store.read()
            dropped = [name for name, held in self._held.items()
                       if (e := entries.get(name)) is None or e.token != held.entry.token]
            for name in dropped:
                self._held.pop(name).pipeline.release()
            self._entries = entries
            self._seen = generation
        if dropped:
            log.info("dropped model(s) %s", ", ".join(dropped))
            gc.collect()  # a model's tensors may sit in reference cycles: free them now

    def _hold(self, entry: Entry) -> _Held:
        """Load ``entry`` in this worker, once however many requests ask at the same time."""
        with self._sync_lock:
            lock = self._loading.setdefault(entry.name, threading.Lock())
        with lock:
            held = self._held.get(entry.name)
            if held is not None and held.entry.token == entry.token:
                return held
            try:
                held = self._load(entry, first=False)
            except errors.ServingError:
                raise
            except Exception as exc:  # it loaded in another worker: why not here?
                log.exception("loading model %s from %s failed", entry.name, entry.url)
                raise errors.ServingError(f"model {entry.name} failed to load in this worker: "
                                          f"{type(exc).__name__}") from exc
            if self._entries.get(entry.name, None) == entry:  # not unloaded meanwhile
                previous = self._held.get(entry.name)
                if previous is not None:  # an earlier load of the name, its code still held
                    previous.pipeline.release()
                self._held[entry.name] = held
            else:
                held.pipeline.release()
                raise errors.NotFound(f"model {entry.name} was unloaded while it loaded here")
            return held

    def _load(self, entry: Entry, first: bool) -> _Held:
        try:
            pipeline = self.build(entry.url, entry.token, first, entry.name)
        except errors.StartupError as exc:
            raise errors.BadRequest(f"model {entry.name}: {exc}") from None
        try:
            return self._start(entry, pipeline)
        except BaseException:
            pipeline.release()
            raise

    def _start(self, entry: Entry, pipeline: Pipeline) -> _Held:
        if self._worker is not None:
            pipeline.enter_worker(*self._worker)
        if self.on_build is not None:
            self.on_build(pipeline)
        try:
            pipeline.load_model()
        except errors.StartupError as exc:
            raise errors.BadRequest(f"model {entry.name}: {exc}") from None
        except Exception as exc:
            log.exception("loading model %s from %s failed", entry.name, entry.url)
            raise errors.ModelError(f"model {entry.name}: model_fn raised {type(exc).__name__}",
                                    stage="load", exception=type(exc).__name__) from exc
        return _Held(entry, pipeline)  # its first answer here records a use

    # -- the shared records ---------------------------------------------------------------

    def _write(self, entry: Entry) -> None:
        self.store.write(entry)
        self._entries[entry.name] = entry

    def _remove(self, name: str) -> None:
        self.store.remove(name)
        self._entries.pop(name, None)
        held = self._held.pop(name, None)
        if held is not None:
            held.pipeline.release()


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
