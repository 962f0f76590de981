"""TorchServe model archives (``.mar``): the manifest read, the archive unpacked safely.

A ``.mar`` is a zip made by ``torch-model-archiver``: the model's files at its root and
``MAR-INF/MANIFEST.json``, whose ``model`` names them (``modelName``, ``serializedFile``,
``handler``, ``modelFile``, ``requirementsFile``, ``configFile``, and ``extraFiles`` in
older archivers; 0.12 puts extra files at the root without naming them). An archive
comes from whoever built it, so unpacking trusts nothing in it:

- every entry's name must stay inside the destination: no absolute path, no ``..``, no
  drive or backslash tricks;
- no symbolic links (a zip entry whose mode says link is refused, not followed);
- at most ``MAX_ENTRIES`` entries and ``max_bytes`` in all, counted from what is actually
  decompressed (a zip's declared sizes can lie), and no entry that inflates more than
  ``MAX_RATIO`` times (a zip bomb);
- every file the manifest names must be a regular file inside the archive.

The model-config YAML (``configFile``) maps onto our settings
(:func:`settings_from_config`): ``batchSize``, ``maxBatchDelay`` (ms), ``responseTimeout``
(s) and ``minWorkers``.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import posixpath
import shutil
import stat
import tempfile
import typing as t
import zipfile
import zlib

from serving.errors import StartupError
from serving.torchserve_config import settings_from_mapping

if t.TYPE_CHECKING:
    from serving.config import Config

__all__ = ["Archive", "ArchiveError", "MANIFEST", "Manifest", "archive_settings",
           "archives_of", "is_archive", "open_archive", "read_manifest", "remove_unpacked",
           "serves_archives", "settings_from_config", "settings_from_mapping", "unpack"]

MANIFEST = "MAR-INF/MANIFEST.json"
#: Most entries an archive may hold, and most times one entry may inflate.
MAX_ENTRIES = 10_000
MAX_RATIO = 1000
_CHUNK = 1024 * 1024


class ArchiveError(StartupError):
    """A model archive that cannot be served as it is; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What ``MAR-INF/MANIFEST.json`` says of the model (paths relative to the archive)."""

    model_name: str
    version: str | None
    serialized_file: str | None
    handler: str | None
    model_file: str | None
    requirements_file: str | None
    config_file: str | None
    extra_files: tuple[str, ...]
    #: The whole manifest, as TorchServe hands it to a handler (``context.manifest``).
    raw: dict[str, t.Any]

    def named_files(self) -> list[str]:
        """The files the manifest names (a handler may also be a built-in's name)."""
        files = [f for f in (self.serialized_file, self.model_file, self.requirements_file,
                             self.config_file) if f]
        if self.handler and self.handler.endswith(".py"):
            files.append(self.handler)
        elif self.handler and ":" in self.handler and self.handler.split(":")[0].endswith(".py"):
            files.append(self.handler.split(":")[0])
        return files + list(self.extra_files)


def _safe_name(name: str, source: str) -> str:
    """``name`` as a relative path that stays inside the archive, or an ArchiveError."""
    if "\\" in name or "\0" in name:
        raise ArchiveError(f"{source}: the entry {name!r} has a backslash or NUL in its name")
    normal = posixpath.normpath(name)
    if (name.startswith("/") or normal == ".." or normal.startswith("../")
            or (len(name) > 1 and name[1] == ":")):
        raise ArchiveError(f"{source}: the entry {name!r} points outside the archive")
    return normal


def parse_manifest(text: bytes, source: str) -> Manifest:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ArchiveError(f"{source}: {MANIFEST} is not JSON: {exc}") from None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("modelName"), str):
        raise ArchiveError(f"{source}: {MANIFEST} has no model.modelName")
    fields: dict[str, str | None] = {}
    for key in ("modelVersion", "serializedFile", "handler", "modelFile", "requirementsFile",
                "configFile"):
        value = model.get(key)
        if value is not None and not isinstance(value, str):
            raise ArchiveError(f"{source}: {MANIFEST}: model.{key} must be a string")
        fields[key] = value or None
    extra = model.get("extraFiles") or ""
    if not isinstance(extra, str):
        raise ArchiveError(f"{source}: {MANIFEST}: model.extraFiles must be a string")
    manifest = Manifest(
        model_name=model["modelName"], version=fields["modelVersion"],
        serialized_file=fields["serializedFile"], handler=fields["handler"],
        model_file=fields["modelFile"], requirements_file=fields["requirementsFile"],
        config_file=fields["configFile"],
        extra_files=tuple(f.strip() for f in extra.split(",") if f.strip()), raw=document)
    for name in manifest.named_files():
        _safe_name(name, source)
    return manifest


#: The largest manifest read: TorchServe's are a few hundred bytes.
MAX_MANIFEST_BYTES = 1024 * 1024


def _manifest_bytes(archive: zipfile.ZipFile, path: str) -> bytes:
    """The manifest's bytes, read no further than :data:`MAX_MANIFEST_BYTES` whatever its
    entry declares (a small archive may inflate to a huge manifest)."""
    try:
        with archive.open(MANIFEST) as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except KeyError:
        raise ArchiveError(f"{path}: no {MANIFEST}: not a model archive") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path}: {MANIFEST} cannot be read: {exc}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{path}: {MANIFEST} is more than {MAX_MANIFEST_BYTES} bytes")
    return text


def read_manifest(path: str) -> Manifest:
    """The manifest of a ``.mar`` file or of an unpacked archive (a directory with
    ``MAR-INF/MANIFEST.json``)."""
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, MANIFEST), "rb") as f:
                text = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ArchiveError(f"{path}: no {MANIFEST}: not an unpacked model archive") from None
        if len(text) > MAX_MANIFEST_BYTES:
            raise ArchiveError(f"{path}: {MANIFEST} is more than {MAX_MANIFEST_BYTES} bytes")
        return parse_manifest(text, path)
    try:
        with zipfile.ZipFile(path) as archive:
            return parse_manifest(_manifest_bytes(archive, path), path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive: {exc}") from None


def unpack(path: str, destination: str, max_bytes: int) -> Manifest:
    """Unpack the ``.mar`` at ``path`` into ``destination`` (made empty, or new), under the
    rules of the module's text; its manifest, every file it names checked to be there."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive: {exc}") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise ArchiveError(f"{path}: {len(entries)} entries, more than {MAX_ENTRIES}")
        manifest = parse_manifest(_manifest_bytes(archive, path), path)
        os.makedirs(destination, exist_ok=True)
        root = os.path.realpath(destination)
        total = 0
        files = set()
        for entry in entries:
            name = _safe_name(entry.filename, path)
            mode = entry.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{path}: the entry {entry.filename!r} is a symbolic link")
            target = os.path.realpath(os.path.join(root, name))
            if target != root and not target.startswith(root + os.sep):
                raise ArchiveError(f"{path}: the entry {entry.filename!r} points outside "
                                   f"the archive")
            try:
                if entry.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
            except (FileExistsError, NotADirectoryError):  # "a", then "a/b"
                raise ArchiveError(f"{path}: the entry {entry.filename!r} is inside a file "
                                   f"of the archive") from None
            if os.path.isdir(target):  # "a/b", then "a"
                raise ArchiveError(f"{path}: the entry {entry.filename!r} is also a "
                                   f"directory of the archive")
            written = 0
            limit = max(entry.compress_size, 1) * MAX_RATIO
            with archive.open(entry) as source, open(target, "wb") as out:
                while chunk := source.read(_CHUNK):
                    written += len(chunk)
                    total += len(chunk)
                    if total > max_bytes:
                        raise ArchiveError(f"{path}: unpacks to more than {max_bytes} bytes")
                    if written > limit:
                        raise ArchiveError(f"{path}: the entry {entry.filename!r} inflates "
                                           f"more than {MAX_RATIO} times (a zip bomb?)")
                    out.write(chunk)
            files.add(name)
    missing = [name for name in manifest.named_files() if posixpath.normpath(name) not in files]
    if missing:
        raise ArchiveError(f"{path}: {MANIFEST} names {', '.join(missing)}, not in the archive")
    return manifest


def settings_from_config(directory: str, manifest: Manifest) -> dict[str, t.Any]:
    """Our settings from the archive's model-config YAML (none without one). Other keys
    (``maxWorkers``, ``deviceType``, a handler's own section, ...) stay for the handler
    (``context.model_yaml_config``)."""
    if manifest.config_file is None:
        return {}
    return settings_from_mapping(model_yaml_config(directory, manifest), manifest.config_file,
                                 ArchiveError)


def archive_settings(config: Config, name: str, directory: str,
                     manifest: Manifest) -> dict[str, t.Any]:
    """The settings archive ``name`` is served with: its model-config YAML's, and what
    ``--ts-config`` gives for the name (a snapshot's winning over the YAML, ``models``'
    under it, as TorchServe takes them)."""
    settings = settings_from_config(directory, manifest)
    given = config.archive_settings.get(name)
    if given is None:
        return settings
    more, wins = given
    return {**settings, **more} if wins else {**more, **settings}


def model_yaml_config(directory: str, manifest: Manifest) -> dict[str, t.Any]:
    """The model-config YAML as a dict (TorchServe's ``context.model_yaml_config``)."""
    if manifest.config_file is None:
        return {}
    try:
        import yaml
    except ImportError:
        raise ArchiveError(f"{manifest.config_file}: reading a model-config YAML needs "
                           f"PyYAML: pip install 'serving-toolkit[torchserve]'") from None
    path = os.path.join(directory, manifest.config_file)
    try:
        with open(path, "rb") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ArchiveError(f"{manifest.config_file}: not a readable YAML file: {exc}") from None
    if not isinstance(config, dict):
        raise ArchiveError(f"{manifest.config_file}: a model config is a mapping of keys")
    return config


# -- the archives a server serves --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Archive:
    """One model archive, ready to serve: its name, where its files are, its manifest, and
    the settings it is served with (:func:`archive_settings`)."""

    name: str
    directory: str
    manifest: Manifest
    settings: dict[str, t.Any]
    #: Where it came from, as TorchServe shows it: its file name in the store, or its path.
    source: str


def serves_archives(config: Config) -> bool:
    """Whether ``config`` serves TorchServe model archives (a model store, or a .mar)."""
    return config.model_store is not None or is_archive(config.model_dir)


def remove_unpacked(directory: str) -> None:
    """Remove ``directory`` if this server unpacked it (an unloaded archive's files)."""
    if _root is not None and os.path.dirname(os.path.realpath(directory)) == \
            os.path.realpath(_root):
        shutil.rmtree(directory, ignore_errors=True)


def is_archive(path: str) -> bool:
    """Whether ``path`` is a ``.mar`` file or an unpacked archive."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MANIFEST))
    return path.endswith(".mar") and os.path.isfile(path)


def _unpack_root() -> str:
    """Where this server unpacks its archives: a directory removed when the process that
    made it (the gunicorn master) exits."""
    global _root
    if _root is None or not os.path.isdir(_root):
        _root = tempfile.mkdtemp(prefix="serving-archives-")
        atexit.register(_remove_root, _root, os.getpid())
    return _root


def _remove_root(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not the forked workers, which exit through here too
        shutil.rmtree(path, ignore_errors=True)


_root: str | None = None


def open_archive(path: str, max_bytes: int) -> tuple[str, Manifest]:
    """An archive's directory and manifest: a ``.mar`` unpacked (under this server's
    directory for them, made by the master: every worker sees it), a directory as it is."""
    if os.path.isdir(path):
        return path, read_manifest(path)
    destination = tempfile.mkdtemp(prefix=os.path.basename(path)[:-4] + "-", dir=_unpack_root())
    try:
        return destination, unpack(path, destination, max_bytes)
    except BaseException:  # a failed unpack leaves nothing behind, at once
        shutil.rmtree(destination, ignore_errors=True)
        raise


def archives_of(config: Config) -> list[Archive]:
    """The archives ``config`` serves: those of ``--model-store`` that ``--models`` names,
    or the one ``--model-dir`` is; none when it names neither.

    :raises ArchiveError: an archive that cannot be served, a name twice, a ``--models``
        entry that names no archive of the store.
    """
    from serving.contract.models import valid_model_name

    max_bytes = int(config.archive_max_mb * 2**20)
    if config.management_port is not None:
        _unpack_root()  # made by the master, so that every worker unpacks into the same one
    wanted: list[tuple[str | None, str]] = []  # (name given or None, path)
    if config.model_store is not None:
        store = config.model_store
        if config.models.strip().lower() == "none":
            if config.management_port is None:
                raise ArchiveError("--models none: nothing to serve without "
                                   "--management-port to load archives later")
        elif config.models.strip().lower() == "all":
            wanted = [(None, os.path.join(store, entry)) for entry in sorted(os.listdir(store))
                      if is_archive(os.path.join(store, entry))]
            if not wanted:
                raise ArchiveError(f"model store {store} holds no model archives (.mar)")
        else:
            for part in config.models.split(","):
                name, _, file = part.strip().rpartition("=")
                path = os.path.normpath(os.path.join(store, file.strip()))
                if not file.strip() or os.path.dirname(path) != os.path.normpath(store):
                    raise ArchiveError(f"--models: {part.strip()!r} is not name=file.mar of "
                                       f"an archive in {store}")
                if not is_archive(path):
                    raise ArchiveError(f"--models: {file.strip()} is not a model archive in "
                                       f"{store}")
                wanted.append((name.strip() or None, path))
    elif is_archive(config.model_dir):
        wanted = [(None, config.model_dir)]
    archives: list[Archive] = []
    for name, path in wanted:
        directory, manifest = open_archive(path, max_bytes)
        name = name or manifest.model_name
        if not valid_model_name(name):
            raise ArchiveError(f"{path}: the model name {name!r} is not 1-255 letters, digits "
                               f"and ._+=- (not starting with one of those)")
        if any(archive.name == name for archive in archives):
            raise ArchiveError(f"{path}: a second model named {name}")
        source = os.path.basename(path) if config.model_store is not None else path
        archives.append(Archive(name, directory, manifest,
                                archive_settings(config, name, directory, manifest), source))
    return archives
