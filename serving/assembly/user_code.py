"""Where the user's code comes from: finding ``inference.py``, unpacking a
``.tar.gz`` submit directory, installing ``requirements.txt``, importing it.

A single-model server does all of this once, in the gunicorn master, before any
worker starts. A multi-model server imports each model's own ``code/inference.py``
in every worker that answers for it, each into a namespace of its own
(:func:`load_user_code` with ``private``).
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import types
import typing as t

from serving.config import Config
from serving.errors import StartupError

if t.TYPE_CHECKING:
    from handlers.content import Registry

__all__ = ["UserCode", "install_requirements", "install_requirements_file", "load_user_code",
           "locate_user_script", "requirements_target"]

log = logging.getLogger(__name__)

DEFAULT_PROGRAM = "inference.py"


def _unpack(archive: str) -> str:
    target = tempfile.mkdtemp(prefix="serving-code-")
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")  # refuses absolute paths, ../ and links out
            else:  # Python before 3.10.12 / 3.11.4: check the paths ourselves
                for member in tar.getmembers():
                    path = os.path.realpath(os.path.join(target, member.name))
                    if not path.startswith(os.path.realpath(target) + os.sep) and path != target:
                        raise StartupError(f"{archive}: {member.name} points outside the archive")
                    if member.issym() or member.islnk():
                        raise StartupError(f"{archive}: links are not allowed ({member.name})")
                tar.extractall(target)
    except (tarfile.TarError, OSError) as exc:
        raise StartupError(f"cannot unpack submit directory {archive}: {exc}") from None
    return target


def locate_user_script(config: Config) -> str | None:
    """The path of the user's script, or ``None`` when there is none.

    With ``SAGEMAKER_PROGRAM`` or ``SAGEMAKER_SUBMIT_DIRECTORY`` set, the script
    must exist: it is looked for in the submit directory, and, when that was
    left at its default and does not exist, in ``<model_dir>/code`` (where the
    SDK puts the code of a repacked model). With neither set,
    ``<model_dir>/code/inference.py`` is used when it exists, then
    ``inference.py`` in the default submit directory; none is no error here.
    """
    model_code = os.path.join(config.model_dir, "code")
    explicit_program = config.sources.get("program") != "default"
    explicit_dir = config.sources.get("submit_dir") != "default"
    if not (explicit_program or explicit_dir):
        for directory in (model_code, config.submit_dir):
            candidate = os.path.join(directory, DEFAULT_PROGRAM)
            if os.path.isfile(candidate):
                return candidate
        return None

    program = config.program or DEFAULT_PROGRAM
    if not program.endswith(".py"):
        program += ".py"
    source = config.submit_dir
    if source.startswith("s3://"):
        raise StartupError(f"submit directory {source}: S3 is not reachable; unpack it locally")
    if os.path.isfile(source) and source.endswith((".tar.gz", ".tgz", ".tar")):
        directory = _unpack(source)
    elif os.path.isdir(source):
        directory = source
    elif not explicit_dir:
        directory = source = model_code
    else:
        raise StartupError(
            f"submit directory {source} ({config.where('submit_dir')}) is neither a directory "
            f"nor a .tar.gz"
        )
    path = os.path.join(directory, program)
    if not os.path.isfile(path):
        raise StartupError(f"user program {program} ({config.where('program')}) is not in {source}")
    return path


def requirements_target() -> str | None:
    """Where ``requirements.txt`` installs go when pip cannot write this environment's
    site-packages (a read-only root filesystem; a uid that does not own the environment,
    as Kubernetes' runAsUser or OpenShift's give): a directory in the temporary directory,
    at the end of ``sys.path``, so that the environment's own packages still win over the
    copies of them pip puts there too. ``None`` where pip can install in place.

    Made ready in the master before workers fork, so that every worker finds what one of
    them installs there (a multi-model server installs at a model's first load).
    """
    if os.access(sysconfig.get_paths()["purelib"], os.W_OK):
        return None
    target = os.path.join(tempfile.gettempdir(), f"serving-requirements-{os.getuid()}")
    os.makedirs(target, exist_ok=True)  # before it is on sys.path: a missing entry is cached
    if target not in sys.path:
        sys.path.append(target)
    return target


def install_requirements(script: str) -> None:
    """pip-install the ``requirements.txt`` beside ``script``, if there is one.

    Raises :class:`StartupError` carrying pip's own output when it fails.
    """
    requirements = os.path.join(os.path.dirname(script), "requirements.txt")
    if os.path.isfile(requirements):
        install_requirements_file(requirements)


def install_requirements_file(requirements: str) -> None:
    """pip-install ``requirements`` (a model archive's ``requirementsFile``, a script's
    ``requirements.txt``); see :func:`install_requirements`."""
    directory = os.path.dirname(requirements)
    target = requirements_target()
    log.info("installing %s%s", requirements, f" into {target}" if target else "")
    # Relative paths in the file are taken from the script's directory.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
         *(["--target", target, "--upgrade"] if target else []), "-r", requirements],
        cwd=directory, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())
        raise StartupError(f"pip install -r {requirements} failed:\n{output}")
    importlib.invalidate_caches()  # the target's new packages, for this process's finders
    log.debug("pip output:\n%s", result.stdout)


class UserCode:
    """A user's script, imported, and the modules it brought with it.

    Made by :func:`load_user_code`. A private one (a multi-model server's model) owns a
    package name no other model has; :meth:`release` takes its modules out of
    ``sys.modules`` so that the next load of that model runs its files as they are then.
    """

    def __init__(self, module: types.ModuleType, registry: Registry,
                 namespace: _Namespace | None = None) -> None:
        self.module = module
        #: Where the script's ``handlers.content.register`` calls went: its own layer.
        self.registry = registry
        self._namespace = namespace

    @property
    def package(self) -> str | None:
        """The private package the model's modules live under; None: the process's own."""
        return self._namespace.package if self._namespace is not None else None

    def release(self) -> None:
        """Forget the model's own modules (a private namespace; the process's stays)."""
        if self._namespace is not None:
            self._namespace.release()
            self._namespace = None


def load_user_code(script: str, registry: Registry, *, private: str | None = None) -> UserCode:
    """Import the user's script; its own handlers go into a new layer over ``registry``.

    :param private: ``None``: the script is the process's one model, imported as
        SageMaker's containers do (its directory on ``sys.path``, its modules under their
        own names, so pickles that name them load). A name: the model's private package
        (a multi-model server's model, ``serving_model_<token>``): the script and every
        module it imports from its own directory live under that package and nowhere
        else; see :class:`_Namespace`.
    :raises StartupError: the script, or a module it imports, raised.
    """
    from handlers.content import registering_into

    layer = registry.layer()
    namespace = None
    if private is None:
        directory = os.path.dirname(os.path.abspath(script))
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = os.path.splitext(os.path.basename(script))[0]
        spec = importlib.util.spec_from_file_location(name, script)
    else:
        namespace = _Namespace(private, [os.path.dirname(os.path.abspath(script))])
        name = f"{private}.{os.path.splitext(os.path.basename(script))[0]}"
        spec = namespace.spec(name, script)
    if spec is None or spec.loader is None:
        raise StartupError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with registering_into(layer):
            spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if namespace is not None:
            namespace.release()
        if not isinstance(exc, Exception):
            raise
        log.error("importing %s failed", script, exc_info=True)
        raise StartupError(f"importing {script} failed: {type(exc).__name__}: {exc}") from exc
    return UserCode(module, layer, namespace)


class _Namespace:
    """One model's modules, under a package of its own: ``serving_model_<token>``.

    Why a package and a rewritten ``import`` rather than ``sys.path``: ``sys.path`` and
    ``sys.modules`` are one per process, so two models that each ``import helper`` would
    get whichever ``helper`` came first. Here the model's directory is the ``__path__`` of
    a package no other model has, and every module loaded from it gets an ``__import__``
    of its own (through its ``__builtins__``) that turns a top-level name the directory
    provides into the private one: ``import helper`` binds the model's
    ``serving_model_<token>.helper``; ``from utils.text import clean`` and relative
    imports work as they read. A name the directory does not provide, or one of the
    standard library's, is imported as usual, so a module only another model has is an
    ImportError, never that model's.

    What this does not reach: code outside the model that imports by name on the
    model's behalf — ``importlib.import_module("helper")``, or a pickle naming
    ``helper.Net`` (``torch.save`` of a whole model): those see ``sys.modules`` and
    ``sys.path`` only. A model's source is compiled at each load, never read from
    ``__pycache__``: a file changed within the same second as its cached bytecode
    (whose timestamp has one-second steps) runs as changed.
    """

    def __init__(self, package: str, roots: list[str]) -> None:
        if package in sys.modules or not package.isidentifier():
            raise ValueError(f"{package} is not a free package name")
        self.package = package
        self.roots = roots
        self._provides: dict[str, bool] = {}
        original = builtins.__import__

        def model_import(name: str, globals: t.Any = None, locals: t.Any = None,
                         fromlist: t.Any = (), level: int = 0) -> types.ModuleType:
            if level == 0 and self.provides(top := name.partition(".")[0]):
                module = original(f"{package}.{name}", globals, locals, fromlist, 0)
                return module if fromlist else sys.modules[f"{package}.{top}"]
            return original(name, globals, locals, fromlist, level)

        #: What every module of this model resolves builtins through.
        self.builtins = dict(builtins.__dict__, __import__=model_import)
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = list(roots)
        root = importlib.util.module_from_spec(spec)
        root.__path__ = list(roots)
        sys.modules[package] = root
        _FINDER.add(self)

    def provides(self, top: str) -> bool:
        """Whether ``top`` is a module or package in the model's own directory."""
        known = self._provides.get(top)
        if known is None:
            found = None
            # The standard library's names stay its own: a stray code/logging.py or
            # code/types.py would break the model's every other import of them.
            if top not in sys.stdlib_module_names:
                found = importlib.machinery.PathFinder.find_spec(top, self.roots)
            if found is not None and found.origin is None:
                # A bare directory (a namespace portion) yields to a regular module of the
                # name elsewhere, as it would on sys.path.
                elsewhere = importlib.machinery.PathFinder.find_spec(top)
                if elsewhere is not None and elsewhere.origin is not None:
                    found = None
            known = self._provides[top] = found is not None
        return known

    def spec(self, fullname: str, origin: str,
             search: list[str] | None = None) -> importlib.machinery.ModuleSpec | None:
        """How to load the model's source file ``origin`` as ``fullname``."""
        loader = _ModelSourceLoader(fullname, origin, self.builtins)
        return importlib.util.spec_from_file_location(
            fullname, origin, loader=loader, submodule_search_locations=search)

    def release(self) -> None:
        _FINDER.remove(self)
        prefix = self.package + "."
        for name in [n for n in list(sys.modules) if n == self.package or n.startswith(prefix)]:
            sys.modules.pop(name, None)


class _ModelSourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a model's ``.py`` file: compiled from its source each time, and executed
    with the model's ``__import__``."""

    def __init__(self, fullname: str, path: str, builtins_: dict[str, t.Any]) -> None:
        super().__init__(fullname, path)
        self._builtins = builtins_

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = self._builtins
        super().exec_module(module)


class _ModelFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of private model packages (first on ``sys.meta_path``, which
    it joins with the first one): a model's ``.py`` files get :class:`_ModelSourceLoader`;
    its compiled extensions, namespace packages and ``.pyc`` files load as usual."""

    def __init__(self) -> None:
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()

    def add(self, namespace: _Namespace) -> None:
        with self._lock:
            self._namespaces[namespace.package] = namespace
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def remove(self, namespace: _Namespace) -> None:
        with self._lock:
            if self._namespaces.get(namespace.package) is namespace:
                del self._namespaces[namespace.package]

    def find_spec(self, fullname: str, path: t.Any = None,
                  target: t.Any = None) -> importlib.machinery.ModuleSpec | None:
        namespace = self._namespaces.get(fullname.partition(".")[0])
        if namespace is None or "." not in fullname:
            return None
        found = importlib.machinery.PathFinder.find_spec(fullname, path)
        if found is None or not isinstance(found.loader, importlib.machinery.SourceFileLoader):
            return found
        return namespace.spec(fullname, found.origin, found.submodule_search_locations)


_FINDER = _ModelFinder()
