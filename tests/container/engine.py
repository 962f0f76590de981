"""Building and running the image with what the machine has: a Docker engine, else buildah.

Without a Docker engine (our machines), images are built with ``buildah bud
--storage-driver vfs --isolation chroot`` on a Debian bookworm base made once
with ``debootstrap`` and kept in buildah's storage (``localhost/serving-base``),
so that reruns only rebuild the layers the change touched. Containers run with
``buildah run --isolation chroot --network host``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_IMAGE = "localhost/serving-base:bookworm"
ROOTFS_CACHE = Path(os.environ.get("SERVING_ROOTFS_CACHE", "/var/cache/serving-toolkit/rootfs"))
BUILD_TIMEOUT = 1800


def pip_find_links() -> str | None:
    """The find-links folder of this machine's pip config (it holds the CPU torch wheel)."""
    try:
        listing = subprocess.run(["pip", "config", "list"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            folder = value.strip().strip("'\"").split()[0]
            if os.path.isdir(folder):
                return folder
    return None


#: Where the server may write (docs/operating.md, "Where it writes"): everything else of the image's
#: filesystem must be as the image had it after start-up, requests and shutdown.
WRITABLE = ("tmp", "dev/shm")


class Running:
    """A started container: its process, how to send it SIGTERM, the processes in it and,
    when asked for at start, what it wrote outside :data:`WRITABLE`."""

    def __init__(self, process: subprocess.Popen, stop: t.Callable[[], None],
                 cleanup: t.Callable[[], None], log: Path,
                 processes: t.Callable[[], list[dict]],
                 written: t.Callable[[], list[str]] | None = None) -> None:
        self.process, self._stop, self._cleanup, self.log_path = process, stop, cleanup, log
        self._processes, self._written = processes, written
        self._written_at_exit: list[str] | None = None

    def processes(self) -> list[dict]:
        """The container's processes, each as /proc/<pid>/status tells: ``pid``, ``uids``
        and ``gids`` (real, effective, saved, filesystem), ``groups``, ``cap_eff``,
        ``no_new_privs`` and ``command``."""
        return self._processes()

    def written(self) -> list[str]:
        """Paths of the image's filesystem created, changed or removed since the start,
        outside :data:`WRITABLE` (start with ``watch_writes=True``); after
        :meth:`terminate`, as the server left them."""
        assert self._written is not None, "started without watch_writes"
        if self._written_at_exit is not None:
            return self._written_at_exit
        return self._written()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the server, as a host scaling down sends it; the exit code."""
        self._stop()
        try:
            code = self.process.wait(timeout)
            if self._written is not None:  # before the container and its files are removed
                self._written_at_exit = self._written()
            return code
        finally:
            self._cleanup()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._cleanup()


class Engine:
    name = ""

    def build(self, tag: str, context: Path, dockerfile: Path | None = None,
              args: t.Mapping[str, str] | None = None) -> None:
        raise NotImplementedError

    def start(self, image: str, model_dir: Path | None, command: list[str], log: Path, *,
              user: str | None = None, env: t.Mapping[str, str] | None = None,
              watch_writes: bool = False) -> Running:
        """Run ``command`` in a new container of ``image`` through its entrypoint, as
        ``user`` (the image's own by default), with ``model_dir`` mounted read-only at
        /opt/ml/model."""
        raise NotImplementedError

    def run(self, image: str, command: list[str]) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def user_of(self, image: str) -> str:
        raise NotImplementedError

    def framework_args(self, framework: str) -> dict[str, str]:
        return {"FRAMEWORK": framework}


def context_digest(context: Path, dockerfile: Path | None,
                   args: t.Mapping[str, str]) -> str:
    """A digest of what a build reads: the Dockerfile, the build arguments, and the files
    of the context that its ``.dockerignore`` lets in (ours: ``*`` then ``!`` lines), or
    all of them; compiled Python left out, as the ``.dockerignore`` leaves it."""
    import hashlib

    digest = hashlib.sha256()
    dockerfile = dockerfile or context / "Dockerfile"
    digest.update(dockerfile.read_bytes())
    digest.update(json.dumps(sorted(args.items())).encode())
    ignore = context / ".dockerignore"
    roots = [context]
    if ignore.is_file():
        digest.update(ignore.read_bytes())
        lines = [line.strip() for line in ignore.read_text().splitlines()]
        if "*" in lines:
            roots = [context / line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for root in sorted(roots):
        files = [root] if root.is_file() else sorted(
            path for path in root.rglob("*") if path.is_file()
            and "__pycache__" not in path.parts and path.suffix != ".pyc")
        for path in files:
            digest.update(str(path.relative_to(context)).encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(oct(path.stat().st_mode & 0o777).encode())
    return digest.hexdigest()


def _check(command: list[str], timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


class Docker(Engine):
    name = "docker"

    def build(self, tag, context, dockerfile=None, args=None):
        command = ["docker", "build", "-q", "-t", tag]
        if dockerfile:
            command += ["-f", str(dockerfile)]
        for key, value in (args or {}).items():
            command += ["--build-arg", f"{key}={value}"]
        _check(command + [str(context)])

    def framework_args(self, framework):
        # A Docker build reaches the network: the CPU wheel index keeps torch small.
        return {"FRAMEWORK": framework,
                "PIP_OPTIONS": "--extra-index-url https://download.pytorch.org/whl/cpu"}

    def start(self, image, model_dir, command, log, *, user=None, env=None,
              watch_writes=False):
        name = f"serving-test-{uuid.uuid4().hex[:12]}"
        options = ["-v", f"{model_dir}:/opt/ml/model:ro"] if model_dir else []
        if user:
            options += ["--user", user]
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        if watch_writes:  # a read-only root: a write outside /tmp and /dev/shm fails there
            options += ["--read-only", "--tmpfs", "/tmp"]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["docker", "run", "--rm", "--name", name, "--network", "host", *options,
                 image, *command],
                stdout=out, stderr=subprocess.STDOUT)

        def processes() -> list[dict]:
            listing = _check(["docker", "exec", name, "python3", "-c", _processes_script()])
            return json.loads(listing.stdout)

        return Running(process,
                       lambda: subprocess.run(["docker", "kill", "--signal", "TERM", name],
                                              capture_output=True),
                       lambda: subprocess.run(["docker", "rm", "-f", name], capture_output=True),
                       log, processes, (lambda: []) if watch_writes else None)

    def run(self, image, command):
        return subprocess.run(["docker", "run", "--rm", image, *command], capture_output=True,
                              text=True, timeout=300)

    def user_of(self, image):
        return _check(["docker", "image", "inspect", "-f", "{{.Config.User}}", image]).stdout.strip()

    def labels_of(self, image):
        return json.loads(_check(["docker", "image", "inspect", image]).stdout)[0]["Config"] \
            .get("Labels") or {}


class Buildah(Engine):
    name = "buildah"
    base = ["buildah", "--storage-driver", "vfs"]
    #: vfs stores every layer as a full copy (a torch image is ~1 GB a layer): with less
    #: free disk than this, the cached layers of earlier builds are dropped before
    #: building (tagged images and the base image stay).
    min_free_bytes = 30 * 2**30

    def prune_if_short_of_disk(self) -> None:
        # Containers of earlier runs that died before their cleanup hold their images.
        for line in _check([*self.base, "containers", "--format", "{{.ContainerName}}"]
                           ).stdout.split():
            if line.startswith("serving-test-"):
                subprocess.run([*self.base, "rm", line], capture_output=True)
        storage = "/var/lib/containers" if os.path.isdir("/var/lib/containers") else "/"
        if shutil.disk_usage(storage).free < self.min_free_bytes:
            for image in _check([*self.base, "images", "-q", "--filter", "dangling=true"]
                                ).stdout.split():
                subprocess.run([*self.base, "rmi", "-f", image], capture_output=True)

    def ensure_base_image(self) -> None:
        """Debian bookworm with Python 3.11, made with debootstrap once and kept."""
        if subprocess.run([*self.base, "inspect", BASE_IMAGE], capture_output=True).returncode == 0:
            return
        if not (ROOTFS_CACHE / "usr" / "bin" / "python3").exists():
            partial = Path(tempfile.mkdtemp(prefix="rootfs-", dir=ROOTFS_CACHE.parent
                                            if ROOTFS_CACHE.parent.exists() else None))
            _check(["debootstrap", "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates", "bookworm",
                    str(partial), "http://deb.debian.org/debian"])
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (partial / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(ROOTFS_CACHE, ignore_errors=True)
            partial.rename(ROOTFS_CACHE)
        container = _check([*self.base, "from", "scratch"]).stdout.strip()
        try:
            mount = _check([*self.base, "mount", container]).stdout.strip()
            _check(["cp", "-a", f"{ROOTFS_CACHE}/.", mount])
            _check([*self.base, "umount", container])
            _check([*self.base, "config", "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/bin/bash", container])
            _check([*self.base, "commit", "-q", container, BASE_IMAGE])
        finally:
            subprocess.run([*self.base, "rm", container], capture_output=True)

    def framework_args(self, framework):
        args = {"FRAMEWORK": framework, "BASE_IMAGE": BASE_IMAGE}
        links = pip_find_links()
        if links:  # the CPU torch wheel; without it pip pulls several GB of CUDA packages
            args["PIP_OPTIONS"] = f"--find-links {links}"
        return args

    def build(self, tag, context, dockerfile=None, args=None):
        """Build ``tag``, unless an image was built from exactly these inputs already.

        Why: on vfs a build whose every step is cached still takes minutes here (each
        cached step, and the build stage's working copy removed after), so the inputs'
        digest (:func:`context_digest`) names the image it gave, and an image of that
        name is tagged again instead of rebuilt."""
        self.prune_if_short_of_disk()
        self.ensure_base_image()
        images = {value: self._image_id(value) for value in (args or {}).values()
                  if value.startswith("localhost/")}
        digest = context_digest(Path(context), Path(dockerfile) if dockerfile else None,
                                {**(args or {}), **{f"id:{k}": v for k, v in images.items()}})
        built = f"{tag}-src-{digest[:24]}"
        if subprocess.run([*self.base, "inspect", "--type", "image", built],
                          capture_output=True).returncode == 0:
            _check([*self.base, "tag", built, tag])
            return
        self._forget_older(tag)
        command = [*self.base, "bud", "--isolation", "chroot", "--layers", "-q", "-t", tag,
                   "-t", built, "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        links = pip_find_links()
        if links:
            command += ["-v", f"{links}:{links}:ro"]
        if dockerfile:
            command += ["-f", str(dockerfile)]
        for key, value in (args or {}).items():
            command += ["--build-arg", f"{key}={value}"]
        try:
            _check(command + [str(context)])
        except AssertionError as exc:
            if "layer not known" not in str(exc):
                raise
            # The layer cache lost a layer (pruned under a build): build without it.
            _check([*command, "--no-cache", str(context)])

    def _image_id(self, name: str) -> str:
        found = subprocess.run([*self.base, "images", "-q", "--no-trunc", name],
                               capture_output=True, text=True)
        return found.stdout.strip()

    def _forget_older(self, tag: str) -> None:
        """Drop the names of images built for ``tag`` from other inputs (their layers go
        with them unless a newer build shares them): vfs holds every layer whole."""
        repository, _, name = tag.rpartition(":")
        listed = subprocess.run([*self.base, "images", "--format",
                                 "{{.Repository}}:{{.Tag}}", repository],
                                capture_output=True, text=True).stdout.split()
        for old in listed:
            if old.startswith(f"{tag}-src-"):
                subprocess.run([*self.base, "rmi", old], capture_output=True)

    def start(self, image, model_dir, command, log, *, user=None, env=None,
              watch_writes=False):
        container = _check([*self.base, "from", "-q", "--name",
                            f"serving-test-{uuid.uuid4().hex[:12]}", image]).stdout.strip()
        options = ["-v", f"{model_dir}:/opt/ml/model:ro"] if model_dir else []
        for key, value in (env or {}).items():
            options += ["--env", f"{key}={value}"]
        written = None
        if watch_writes:
            # buildah run has no read-only root: compare the container's own filesystem
            # (vfs: a plain directory) after the run with what it was before.
            root = Path(_check([*self.base, "mount", container]).stdout.strip())
            before = _snapshot(root)

            def written() -> list[str]:
                return _changes(before, _snapshot(root))
        # buildah run does not use the image's entrypoint or user: name both, as docker does.
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*self.base, "run", "--isolation", "chroot", "--network", "host",
                 "--user", user or self.user_of(image), *options, container, "--",
                 "/usr/local/bin/serving-entrypoint", *command],
                stdout=out, stderr=subprocess.STDOUT)

        def stop() -> None:
            # buildah run kills its child on SIGTERM instead of passing it on: signal the
            # server itself (chroot isolation shares the host's process table).
            pid = _server_master(process.pid)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)

        def cleanup() -> None:
            subprocess.run([*self.base, "rm", container], capture_output=True)

        def processes() -> list[dict]:
            # Chroot isolation shares the host's process table: the container's processes
            # are those under buildah's (buildah's own, buildah-chroot-runtime and
            # buildah-chroot-exec, which stay root outside the container, left out).
            found, queue = [], _children(process.pid)
            while queue:
                pid = queue.pop(0)
                queue.extend(_children(pid))
                entry = _process(pid)
                if entry and not os.path.basename(entry["command"][0]).startswith("buildah"):
                    found.append(entry)
            return found

        return Running(process, stop, cleanup, log, processes, written)

    def run(self, image, command):
        container = _check([*self.base, "from", "-q", image]).stdout.strip()
        try:
            return subprocess.run(
                [*self.base, "run", "--isolation", "chroot", "--user", self.user_of(image),
                 container, "--", "/usr/local/bin/serving-entrypoint", *command],
                capture_output=True, text=True, timeout=300)
        finally:
            subprocess.run([*self.base, "rm", container], capture_output=True)

    def user_of(self, image):
        return _check([*self.base, "inspect", "--format", "{{.OCIv1.Config.User}}",
                       image]).stdout.strip()

    def labels_of(self, image):
        # buildah's --format templates have no json function: read the whole description.
        return json.loads(_check([*self.base, "inspect", image]).stdout)["OCIv1"]["config"] \
            .get("Labels") or {}


def _process(pid: int) -> dict | None:
    """What /proc says of one process; ``None`` once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"pid": pid,
            "uids": [int(v) for v in fields["Uid"].split()],
            "gids": [int(v) for v in fields["Gid"].split()],
            "groups": [int(v) for v in fields["Groups"].split()],
            "cap_eff": int(fields["CapEff"], 16),
            "no_new_privs": int(fields.get("NoNewPrivs", "0")),
            "command": [part.decode(errors="replace") for part in command]}


def _processes_script() -> str:
    """A Python program printing :func:`_process` of every process but its own, as JSON:
    run inside a container, it sees the container's processes."""
    return "\n".join([
        "import json, os", "from pathlib import Path", inspect.getsource(_process),
        "found = [_process(int(p.name)) for p in Path('/proc').iterdir()",
        "         if p.name.isdigit() and int(p.name) != os.getpid()]",
        "print(json.dumps([f for f in found if f]))"])


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` but /proc, /sys and /dev: (mtime, size, mode)."""
    found = {}
    for directory, subdirectories, files in os.walk(root):
        if directory == str(root):
            subdirectories[:] = [d for d in subdirectories if d not in ("proc", "sys", "dev")]
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            found[os.path.relpath(path, root)] = (info.st_mtime_ns, info.st_size, info.st_mode)
    return found


def _changes(before: dict, after: dict) -> list[str]:
    """Paths created, changed or removed, outside :data:`WRITABLE`. The /run directory's
    own times are left out: buildah run touches it at every start."""
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    return sorted(path for path in changed if path != "run" and not any(
        path == place or path.startswith(place + "/") for place in WRITABLE))


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (Go programs such as buildah fork from any)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _server_master(root: int) -> int | None:
    """The first process under ``root`` that runs ``serve`` (the gunicorn master)."""
    queue = [root]
    deadline = time.monotonic() + 10
    while queue and time.monotonic() < deadline:
        pid = queue.pop(0)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"bin/serve") for part in command) or (
            b"-m" in command and b"serving" in command
        ):
            return pid
        queue.extend(_children(pid))
    return None


def find_engine() -> tuple[Engine | None, str]:
    """The engine to use, or ``None`` and why there is none."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True,
                                                 timeout=60).returncode == 0:
        return Docker(), "a Docker engine answers"
    if shutil.which("buildah") and shutil.which("debootstrap"):
        return Buildah(), "no Docker engine; buildah and debootstrap are installed"
    return None, ("neither a Docker engine nor buildah + debootstrap is available here "
                  "(`make container-tools` installs buildah and debootstrap with apt-get as root)")
