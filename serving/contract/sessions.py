"""Stateful sessions (SageMaker's sticky routing), kept where every worker sees them.

SageMaker routes the requests of one session to one instance, not to one of our workers,
so a session lives in files under ``SAGEMAKER_SESSIONS_PATH`` (shared memory by default),
not in a worker's memory: any worker answers it, and it outlives a worker that is killed
or replaced. Per session:

- ``<id>.json``: its record (expiry, and ``state``: a small JSON object the user's
  functions keep between requests), written whole to a temporary file and renamed, so a
  worker killed mid-write leaves the old record, never half of one;
- ``<id>.lock``: held (``flock``) by whoever reads or writes the record, so two requests of
  one session, on two workers, take turns;
- ``<id>/``: a directory the model may write (made when first asked for), removed with
  the session.

Expiry is fixed when the session opens (``SAGEMAKER_SESSIONS_EXPIRATION`` seconds; the
``Expires`` of the answer), enforced on every use, and swept: at most once a minute, each
worker's loop (and the opening of a session) removes the expired ones.

The wire side, as AWS's model-hosting-container-standards has it: a request whose body is
``{"requestType": "NEW_SESSION"}`` opens one (answered with
``X-Amzn-SageMaker-New-Session-Id: <id>; Expires=<UTC>``), later requests carry
``X-Amzn-SageMaker-Session-Id: <id>``, and ``{"requestType": "CLOSE"}`` with it closes it
(answered with ``X-Amzn-SageMaker-Closed-Session-Id``). An unknown, expired or malformed id
is a 400, and so is any of this while sessions are off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
import typing as t
import uuid

from serving import errors
from serving.contract.limits import json_document

if t.TYPE_CHECKING:
    from serving.config import Config

__all__ = ["session_store", "CLOSED_HEADER", "NEW_HEADER", "SESSION_HEADER", "Session", "SessionBusy",
           "SessionStore",
           "check_session_id", "session_request_type"]

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_HEADER = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
#: What boto3 sends in the session header with the request that opens one.
NEW_SESSION = "NEW_SESSION"
CLOSE = "CLOSE"
#: SageMaker's pattern and length for a session id (the sagemaker-runtime API model).
_ID_PATTERN = re.compile(r"[a-zA-Z0-9](?:-*[a-zA-Z0-9])*\Z")
MAX_ID = 256
#: The largest session record: state is for small things (a directory holds the rest).
MAX_STATE_BYTES = 1024 * 1024
#: Most sessions open at once: each is files in shared memory, and clients open them.
MAX_SESSIONS = 10_000
SWEEP_SECONDS = 60.0


def check_session_id(value: str) -> str:
    """``value``, if it is a session id SageMaker could send (or ``NEW_SESSION``)."""
    if len(value) > MAX_ID or not (value == NEW_SESSION or _ID_PATTERN.match(value)):
        raise errors.BadRequest(f"{SESSION_HEADER} must be NEW_SESSION or letters, digits and "
                                f"single dashes, at most {MAX_ID} characters")
    return value


def session_request_type(body: bytes, max_decoded_bytes: int) -> str | None:
    """``NEW_SESSION`` or ``CLOSE`` when ``body`` is a session request (a JSON object with
    ``requestType``), ``None`` for any other body. A ``requestType`` of another value is
    a 400; a body past the decoded-size limit a 413. Cheap for ordinary bodies: they are
    looked into only when they hold the word."""
    if b'"requestType"' not in body:
        return None
    try:
        document = json_document(body, max_decoded_bytes)
    except errors.BadRequest:
        return None  # not JSON (or nested past the bound): the model's to read, not ours
    if not isinstance(document, dict) or "requestType" not in document:
        return None
    kind = document["requestType"]
    if kind not in (NEW_SESSION, CLOSE):
        raise errors.BadRequest(f"requestType must be {NEW_SESSION} or {CLOSE}, not "
                                f"{str(kind)[:40]!r}")
    return kind


def _state_json(value: t.Any) -> str:
    """A session's state as JSON, or the model's error saying it is not JSON."""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise errors.ModelError(f"the session's state must be JSON (keep other things in "
                                f"session.directory): {exc}", stage="session") from None


class SessionBusy(errors.ClientError):
    """429: another request of the session held it for longer than the wait allows."""

    status_code = 429

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def _flock_within(fd: int, seconds: float, session_id: str) -> None:
    """Take the lock on ``fd``, polling (``flock`` has no timeout) for at most
    ``seconds``; :class:`SessionBusy` past them."""
    deadline = time.monotonic() + seconds
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionBusy(f"session {session_id} is busy with another request "
                                  f"(waited {seconds:g} s, SERVING_SESSION_WAIT): send its "
                                  f"requests one at a time") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)


class Session:
    """One open session, as a request sees it (``context.session``).

    ``state`` is a JSON object kept between the session's requests: change it, and the
    server writes it back when the request ends (at most 1 MiB). ``directory`` is a
    directory of the session's own, for what is not small; both go when the session does.
    """

    def __init__(self, store: SessionStore, session_id: str, expires: float,
                 state: dict[str, t.Any]) -> None:
        self._store = store
        self.id = session_id
        #: When it expires, in seconds since the epoch.
        self.expires = expires
        self.state = state

    @property
    def expires_text(self) -> str:
        """The expiry as the New-Session-Id header writes it: ``YYYY-MM-DDTHH:MM:SSZ``."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires))

    @property
    def directory(self) -> str:
        path = self._store.directory_of(self.id)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def __repr__(self) -> str:
        return f"Session({self.id!r}, expires {self.expires_text})"


class SessionStore:
    """The sessions of one server, in files under ``path`` (see the module's text)."""

    def __init__(self, path: str, expiration: float, wait: float = 5.0) -> None:
        self.path = path
        self.expiration = expiration
        #: Seconds a request waits for a session another request holds (then 429).
        self.wait = wait
        self.max_sessions = MAX_SESSIONS
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable")
        except OSError as exc:
            raise errors.StartupError(
                f"SAGEMAKER_SESSIONS_PATH {path}: {exc.strerror or exc}; stateful sessions "
                f"need a directory every worker can write") from None
        self._swept = 0.0
        self._sweep_lock = threading.Lock()

    def _file(self, session_id: str, suffix: str) -> str:
        return os.path.join(self.path, session_id + suffix)

    def directory_of(self, session_id: str) -> str:
        return os.path.join(self.path, session_id)

    @contextlib.contextmanager
    def _locked(self, session_id: str, create: bool = False,
                wait: bool | float = True) -> t.Iterator[None]:
        """Hold the session's lock. ``wait``: ``True`` as long as it takes (a holder that
        never calls the model), ``False``: raise BlockingIOError if it is held, a number:
        at most that many seconds, then :class:`SessionBusy` (429)."""
        try:
            fd = os.open(self._file(session_id, ".lock"),
                         os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            raise errors.BadRequest(f"no session {session_id}: it was closed, it expired, "
                                    f"or it never was") from None
        try:
            if wait is True or wait is False:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                _flock_within(fd, wait, session_id)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, session_id: str) -> Session:
        try:
            with open(self._file(session_id, ".json"), "rb") as f:
                record = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            raise errors.BadRequest(f"no session {session_id}: it was closed, it expired, "
                                    f"or it never was") from None
        session = Session(self, session_id, float(record["expires"]), record.get("state", {}))
        if session.expires <= time.time():
            self._remove(session_id)
            raise errors.BadRequest(f"session {session_id} expired at {session.expires_text}")
        return session

    def _write(self, session: Session) -> None:
        data = _state_json({"expires": session.expires, "state": session.state}).encode()
        if len(data) > MAX_STATE_BYTES:
            raise errors.ModelError(f"the session's state is over {MAX_STATE_BYTES} bytes of "
                                    f"JSON: keep large things in session.directory",
                                    stage="session")
        fd, temporary = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temporary, self._file(session.id, ".json"))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _remove(self, session_id: str) -> None:
        for suffix in (".json", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(session_id, suffix))
        shutil.rmtree(self.directory_of(session_id), ignore_errors=True)

    # -- what requests do --------------------------------------------------------------

    def open(self) -> Session:
        """A new session, written before its id is given out."""
        self.sweep()
        try:
            open_now = sum(1 for name in os.listdir(self.path) if name.endswith(".json"))
        except OSError:
            open_now = 0
        if open_now >= self.max_sessions:
            raise errors.ClientError(f"{open_now} sessions are open, the most this server "
                                     f"keeps: close one, or wait for one to expire",
                                     status_code=429)
        session = Session(self, str(uuid.uuid4()), time.time() + self.expiration, {})
        with self._locked(session.id, create=True):
            self._write(session)
        return session

    @contextlib.contextmanager
    def use(self, session_id: str) -> t.Iterator[Session]:
        """The session, held for one request: its other requests wait (at most
        :attr:`wait` seconds, then 429); its state is written back when the request ends,
        if it changed."""
        with self._locked(session_id, wait=self.wait):
            session = self._read(session_id)
            before = _state_json(session.state)
            yield session
            if _state_json(session.state) != before:
                self._write(session)

    def get(self, session_id: str) -> Session:
        """The session as it is now, not held (a WebSocket stream reads it at its start)."""
        with self._locked(session_id, wait=self.wait):
            return self._read(session_id)

    def save(self, session: Session) -> None:
        """Write ``session``'s state back, if it is still open."""
        with self._locked(session.id):
            self._read(session.id)
            self._write(session)

    def close(self, session_id: str) -> None:
        with self._locked(session_id, wait=self.wait):
            self._read(session_id)
            self._remove(session_id)

    def sweep(self, now: float | None = None) -> int:
        """Remove the expired sessions (at most once a minute unless ``now`` is given);
        how many went. A session in use is left for the next sweep: this never waits,
        so a worker's loop may call it."""
        if now is None:
            now = time.time()
            with self._sweep_lock:
                if now - self._swept < SWEEP_SECONDS:
                    return 0
                self._swept = now
        removed = 0
        try:
            names = os.listdir(self.path)
        except OSError:  # the directory went: nothing to sweep, and nothing to fail
            return 0
        for name in names:
            if not name.endswith(".json"):
                continue
            session_id = name[:-5]
            try:
                with self._locked(session_id, wait=False):
                    with open(self._file(session_id, ".json"), "rb") as f:
                        expires = float(json.loads(f.read())["expires"])
                    if expires <= now:
                        self._remove(session_id)
                        removed += 1
            except (errors.BadRequest, OSError, ValueError, KeyError):
                continue
        return removed


def session_store(config: Config) -> SessionStore | None:
    """The server's session store as the settings make it (``None``: sessions are off).
    Every process of the server opens the same directory; the first makes it."""
    if not config.enable_stateful_sessions:
        return None
    return SessionStore(config.sessions_path, config.sessions_expiration, config.session_wait)
