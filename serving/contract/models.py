"""The models a server holds, by name.

A single-model server holds one :class:`~serving.contract.pipeline.Pipeline`, named
``default`` (:class:`Models`). A multi-model server (``SAGEMAKER_MULTI_MODEL=true``)
holds what ``POST /models`` loaded (:class:`ModelRepository`): the same pipeline,
one per name.

How every worker answers for every model. gunicorn spreads requests over worker
processes, so a ``POST /models`` reaches one of them. The repository is shared
state on disk plus one counter in shared memory:

- one small JSON file per loaded model (name, directory, size, a token unique to
  this load) in a directory the master made, written whole (a rename), so it is
  read whole or not at all;
- a generation counter in memory the master mapped before forking, which every
  load and unload bumps under an exclusive ``flock``. Each request reads it (no
  system call); when it moved, the worker reads the directory again, drops the
  models no longer listed (or loaded again since, under another token), and loads
  a listed model it lacks on first use. A worker that restarts is forked with
  nothing loaded and catches up the same way.

Loads and unloads are serialised across workers by the ``flock``; invocations take
no lock. The budget (``SERVING_MODELS_MEMORY_MB``) counts each model's files, and
every worker holds every model it answers for; a load that does not fit unloads
the least recently used models first (a model's file is touched, at most once a
second per worker, when it answers), and one that would not fit alone is a 507.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fcntl
import gc
import hashlib
import json
import logging
import mmap
import os
import re
import threading
import time
import typing as t

from serving import errors
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


class Models:
    """A single-model server's models: one pipeline per name, all loaded at start-up."""

    #: Whether models come and go at run time (the /models routes).
    multi = False

    def __init__(self, pipelines: t.Mapping[str, Pipeline]) -> None:
        self._pipelines = dict(pipelines)
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
        return self.get(DEFAULT_MODEL)

    def describe(self, name: str) -> dict[str, str]:
        """``GET /models/<name>``, in the SageMaker contract's names."""
        return {"modelName": name, "modelUrl": self.get(name).context.model_dir}

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


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loaded model, as the repository's file for it says."""

    name: str
    url: str
    bytes: int
    #: Unique to this load: a model unloaded and loaded again under its name gets another.
    token: str

    def describe(self) -> dict[str, str]:
        """As ``GET /models`` lists it (the SageMaker contract's names)."""
        return {"modelName": self.name, "modelUrl": self.url}


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
        it) and whether this is the load ``POST /models`` asked for (``False``: another
        worker's, or a restarted one's, first use of it).
    :param budget_bytes: the most the loaded models' files may add up to.
    :param lock_timeout: how long a load or unload waits for the one in progress, in
        seconds; past it, 503.
    """

    multi = True

    def __init__(self, directory: str, build: t.Callable[[str, str, bool], Pipeline],
                 budget_bytes: int, lock_timeout: float = 60.0) -> None:
        super().__init__({})
        self.directory = directory
        self.lock_timeout = lock_timeout
        self.build = build
        self.budget_bytes = budget_bytes
        # Shared with every worker forked from here: bumped on each load and unload.
        self._generation = mmap.mmap(-1, 8)
        self._seen = -1
        self._entries: dict[str, Entry] = {}
        self._held: dict[str, _Held] = {}
        self._sync_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._worker: tuple[int, str, int] | None = None

    # -- what every host asks --------------------------------------------------------

    @property
    def ready(self) -> bool:
        # SageMaker health-checks a multi-model container before it loads any model.
        return True

    def loaded(self) -> list[Pipeline]:
        return [held.pipeline for held in list(self._held.values())]

    def enter_worker(self, index: int, device: str, threads: int) -> None:
        self._worker = (index, device, threads)

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
            try:
                os.utime(self._path(name))  # its least-recently-used time, for every worker
            except OSError:
                pass  # unloaded meanwhile: this request still gets its answer
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

    def load(self, name: str, url: str) -> Entry:
        """Load the model in directory ``url`` as ``name``, here and (on first use) in
        every other worker.

        :raises errors.Conflict: 409, ``name`` is loaded already.
        :raises errors.InsufficientStorage: 507, the model alone is over the budget.
        :raises errors.BadRequest: no such directory, or nothing there to serve.
        """
        if not os.path.isdir(url):
            raise errors.BadRequest(f"url {url} is not a directory")
        with self._exclusive():
            self.sync()
            if name in self._entries:
                raise errors.Conflict(f"model {name} is loaded already")
            size = directory_bytes(url, limit=self.budget_bytes)
            if size > self.budget_bytes:
                raise errors.InsufficientStorage(
                    f"model {name} takes more than the whole budget of "
                    f"{_mib(self.budget_bytes)} (SERVING_MODELS_MEMORY_MB)")
            self._make_room(size)
            entry = Entry(name=name, url=url, bytes=size, token=os.urandom(8).hex())
            held = self._load(entry, first=True)
            try:
                self._write(entry)
            except BaseException:
                held.pipeline.release()
                raise
            self._held[name] = held
            self._bump()
        log.info("model %s loaded from %s (%s)", name, url, _mib(size))
        return entry

    def unload(self, name: str) -> None:
        """Unload ``name`` from every worker; :class:`~serving.errors.NotFound` if not loaded."""
        with self._exclusive():
            self.sync()
            if name not in self._entries:
                raise errors.NotFound(f"model {name} is not loaded")
            self._remove(name)
            self._bump()
        self.sync()
        log.info("model %s unloaded", name)

    def _make_room(self, size: int) -> None:
        """Unload the least recently used models until ``size`` more bytes fit the budget
        (the caller holds the exclusive lock)."""
        total = sum(e.bytes for e in self._entries.values())
        if total + size <= self.budget_bytes:
            return

        def last_used(name: str) -> float:
            try:
                return os.stat(self._path(name)).st_mtime
            except OSError:
                return 0.0

        try:
            for victim in sorted(self._entries, key=last_used):
                total -= self._entries[victim].bytes
                self._remove(victim)
                log.info("model %s unloaded to make room (least recently used)", victim)
                if total + size <= self.budget_bytes:
                    return
        finally:
            self._bump()  # now, not after the load: it may fail, and these are gone anyway

    # -- this worker's copies ------------------------------------------------------------

    def sync(self) -> None:
        """Catch up with loads and unloads other workers did: one read of shared memory
        when nothing changed."""
        generation = int.from_bytes(self._generation[:8], "little")
        if generation == self._seen:
            return
        with self._sync_lock:
            generation = int.from_bytes(self._generation[:8], "little")
            if generation == self._seen:
                return
            entries = self._read_entries()
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
            pipeline = self.build(entry.url, entry.token, first)
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

    # -- the shared state ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        # The file is named by a digest (names may be long, or differ only in case on
        # some filesystems); the name is inside.
        return os.path.join(self.directory,
                            hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")

    def _read_entries(self) -> dict[str, Entry]:
        entries = {}
        for filename in os.listdir(self.directory):
            if not filename.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.directory, filename), "rb") as f:
                    entry = Entry(**json.loads(f.read()))
            except FileNotFoundError:  # unloaded while we listed
                continue
            entries[entry.name] = entry
        return entries

    def _write(self, entry: Entry) -> None:
        path = self._path(entry.name)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(dataclasses.asdict(entry), f)
        os.replace(temporary, path)
        self._entries[entry.name] = entry

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        self._entries.pop(name, None)
        held = self._held.pop(name, None)
        if held is not None:
            held.pipeline.release()

    def _bump(self) -> None:
        """Tell every worker the models changed (the caller holds the exclusive lock)."""
        generation = int.from_bytes(self._generation[:8], "little") + 1
        self._generation[:8] = generation.to_bytes(8, "little")

    def _exclusive(self) -> t.ContextManager[None]:
        return _FileLock(os.path.join(self.directory, ".lock"), self.lock_timeout)


class _FileLock:
    """An exclusive ``flock`` on a file: between processes, and between threads of one
    (each takes its own open file). Waited for at most ``timeout`` seconds, then 503: a
    model_fn that never returns holds it, and must not pile up every later load and
    unload (each an HTTP thread) behind it."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        give_up = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    os.close(self._fd)
                    raise errors.ServiceUnavailable(
                        f"another model has been loading or unloading for over "
                        f"{self.timeout:g} s; try again later") from None
                time.sleep(0.02)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
