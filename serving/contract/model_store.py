"""The loaded models' records, shared by every worker of a multi-model server.

One small JSON file per loaded model (:class:`Entry`: name, directory, size, a token unique
to this load) in a directory the master made, written whole (a rename), so that it is read
whole or not at all; and a generation counter in memory the master mapped before forking,
bumped on every change under an exclusive ``flock``, so that a worker sees that something
changed with one read of memory and no system call. A record's modification time is when
the model last answered, in any worker (its least-recently-used time).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import mmap
import os
import time
import typing as t

from serving import errors

__all__ = ["Entry", "FileLock", "ModelStore"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loaded model, as its record says."""

    name: str
    url: str
    bytes: int
    #: Unique to this load: a model unloaded and loaded again under its name gets another.
    token: str
    #: The url as the load named it, when ``url`` is what was made of it (a model
    #: archive's unpacked directory): what the listings show.
    source: str | None = None

    def describe(self) -> dict[str, str]:
        """As ``GET /models`` lists it (the SageMaker contract's names)."""
        return {"modelName": self.name, "modelUrl": self.source or self.url}


class ModelStore:
    """The records in ``directory`` (made and removed by the caller), and the generation.

    Made before fork: the generation's memory is shared with every process forked after.
    Writers hold :meth:`exclusive`; readers take no lock.
    """

    def __init__(self, directory: str, lock_timeout: float = 60.0) -> None:
        self.directory = directory
        self.lock_timeout = lock_timeout
        self._generation = mmap.mmap(-1, 8)

    @property
    def generation(self) -> int:
        return int.from_bytes(self._generation[:8], "little")

    def bump(self) -> None:
        """Tell every process the records changed (the caller holds :meth:`exclusive`)."""
        self._generation[:8] = (self.generation + 1).to_bytes(8, "little")

    def exclusive(self) -> FileLock:
        """The lock every load and unload holds, across processes and threads."""
        return FileLock(os.path.join(self.directory, ".lock"), self.lock_timeout)

    def read(self) -> dict[str, Entry]:
        """Every record, by model name."""
        entries = {}
        for filename in os.listdir(self.directory):
            if not filename.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.directory, filename), "rb") as f:
                    entry = Entry(**json.loads(f.read()))
            except FileNotFoundError:  # removed while we listed
                continue
            entries[entry.name] = entry
        return entries

    def write(self, entry: Entry) -> None:
        path = self._path(entry.name)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(dataclasses.asdict(entry), f)
        os.replace(temporary, path)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def touch(self, name: str) -> None:
        """Record that ``name`` answered now; nothing if it was removed meanwhile."""
        try:
            os.utime(self._path(name))
        except OSError:
            pass

    def last_used(self, name: str) -> float:
        """When ``name`` last answered (or was loaded); 0 when it has no record."""
        try:
            return os.stat(self._path(name)).st_mtime
        except OSError:
            return 0.0

    def _path(self, name: str) -> str:
        # The file is named by a digest (names may be long, or differ only in case on
        # some filesystems); the name is inside.
        return os.path.join(self.directory,
                            hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")


class FileLock:
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

    def __exit__(self, *_: t.Any) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
