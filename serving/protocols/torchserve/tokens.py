"""TorchServe's token authorization (on by default since TorchServe 0.11), with its key
file, its keys and its answers.

At start the master writes ``key_file.json`` (``--key-file``; mode 0600)::

    {"management": {"key": "...", "expiration time": "2026-12-07T16:09:27.258933Z"},
     "inference": {"key": "...", "expiration time": "..."},
     "API": {"key": "..."}}

- the management key opens the management API (``Authorization: Bearer <key>``, the
  word ``Bearer`` as written);
- the inference key opens the main port when the server serves a model store (every
  route but ``/openapi.json``, TorchServe's ``/api-description``, and ``/metrics``,
  which TorchServe serves on a port of its own without a key);
- the API key opens ``GET /token?type=management|inference`` on the management port,
  which replaces that key (a new one, a new expiry), as TorchServe's does.

A key is good for ``--token-expiration-min`` minutes (``token_expiration_min``, 60).
A request without the right key, or with an expired one, gets TorchServe's answer: 400
``InvalidKeyException`` "Token Authorization failed. ...". Every worker reads the
same file (again whenever it changed), so a key renewed through one worker holds in
all of them; the master removes the file when the server stops, as TorchServe does.

Keys are 32 URL-safe characters (TorchServe's are 8): the same file, the same header,
more than 2**190 guesses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
import typing as t

from serving import errors

__all__ = ["InvalidKeyException", "KeyFile", "KINDS"]

#: The keys that expire, by the name ``/token?type=`` gives them.
KINDS = ("management", "inference")
_API = "API"
MESSAGE = ("Token Authorization failed. Token either incorrect, expired, or not provided "
           "correctly")


class InvalidKeyException(errors.ClientError):
    """TorchServe's answer to a request without the right key (its own status and type)."""

    status_code = 400

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


def _new_key() -> str:
    return secrets.token_urlsafe(24)


def _expiry(minutes: float) -> str:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expiry_time(text: t.Any) -> float:
    """The epoch seconds of an ``expiration time``; 0 (expired) for one that cannot be
    read (a file someone edited: no key is good until it is renewed)."""
    try:
        when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return 0.0
    return when.replace(tzinfo=dt.timezone.utc).timestamp()


class KeyFile:
    """The key file at ``path``: written by the master (:meth:`create`), read by every
    worker (:meth:`check`), renewed by whichever worker takes ``/token``."""

    def __init__(self, path: str, minutes: float) -> None:
        self.path = path
        self.minutes = minutes
        self._lock = threading.Lock()
        #: (mtime, inode, size) of the file _keys was read from
        self._seen: tuple[int, int, int] | None = None
        self._keys: dict[str, tuple[bytes, float]] = {}

    @classmethod
    def create(cls, path: str, minutes: float) -> KeyFile:
        """Write a new key file (the master, at start).

        :raises errors.StartupError: its directory cannot be written.
        """
        keys = {kind: {"key": _new_key(), "expiration time": _expiry(minutes)}
                for kind in KINDS}
        keys[_API] = {"key": _new_key()}
        key_file = cls(path, minutes)
        try:
            key_file._write(keys)
        except OSError as exc:
            raise errors.StartupError(
                f"token authorization: cannot write its key file {path}: "
                f"{exc.strerror or exc} (set --key-file, or --disable-token-auth)") from None
        return key_file

    def remove(self) -> None:
        for path in (self.path, self.path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _write(self, keys: dict[str, t.Any]) -> None:
        """The whole file, written beside it and renamed: a reader sees the old keys or
        the new ones, never half of them."""
        directory = os.path.dirname(self.path) or "."
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".key_file-")
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp's mode is 0600
                json.dump(keys, f, indent=2)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _current(self) -> dict[str, tuple[bytes, float]]:
        """The keys as the file holds them now, each as (key, when it expires; inf for
        the API key), read and parsed again only when the file changed: a request pays
        one ``stat``."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return {}  # gone: nothing opens
        seen = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        with self._lock:
            if seen != self._seen:
                try:
                    with open(self.path, "rb") as f:
                        document = json.loads(f.read(64 * 1024))
                except (OSError, ValueError):
                    document = {}
                self._keys = {
                    kind: (entry["key"].encode("utf-8"),
                           float("inf") if kind == _API
                           else _expiry_time(entry.get("expiration time")))
                    for kind, entry in (document.items() if isinstance(document, dict)
                                        else ())
                    if isinstance(entry, dict) and isinstance(entry.get("key"), str)}
                self._seen = seen
            return self._keys

    def check(self, authorization: str | None, kind: str,
              message: str = MESSAGE) -> None:
        """Pass if ``authorization`` (the header) carries the ``kind`` key, unexpired.

        :raises InvalidKeyException: otherwise.
        """
        if authorization is None or not authorization.startswith("Bearer "):
            raise InvalidKeyException(message)
        entry = self._current().get(kind)
        if entry is None:
            raise InvalidKeyException(message)
        key, expires = entry
        given = authorization[len("Bearer "):].strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, key) or expires <= time.time():
            raise InvalidKeyException(message)

    def renew(self, kind: str) -> None:
        """A new ``kind`` key with a new expiry, for every worker (under a lock beside
        the file, so that two renewals at once both land)."""
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(self.path, "rb") as f:
                keys = json.loads(f.read(64 * 1024))
            keys[kind] = {"key": _new_key(), "expiration time": _expiry(self.minutes)}
            self._write(keys)
