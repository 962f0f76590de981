"""Where the user's code comes from: finding ``inference.py``, unpacking a
``.tar.gz`` submit directory, installing ``requirements.txt``, importing it.

All of this runs once, in the gunicorn master, before any worker starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import types

from serving.config import Config
from serving.errors import StartupError

__all__ = ["import_user_module", "install_requirements", "locate_user_script"]

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


def install_requirements(script: str) -> None:
    """pip-install the ``requirements.txt`` beside ``script``, if there is one.

    Raises :class:`StartupError` carrying pip's own output when it fails.
    """
    directory = os.path.dirname(script)
    requirements = os.path.join(directory, "requirements.txt")
    if not os.path.isfile(requirements):
        return
    log.info("installing %s", requirements)
    # Relative paths in the file are taken from the script's directory.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
         "-r", requirements],
        cwd=directory, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())
        raise StartupError(f"pip install -r {requirements} failed:\n{output}")
    log.debug("pip output:\n%s", result.stdout)


def import_user_module(script: str, name: str | None = None) -> types.ModuleType:
    """Import the user's script as a module; its sibling modules import normally.

    :param name: the module's name in ``sys.modules``; by default the script's (a
        multi-model server names each model's ``inference.py`` apart).
    """
    directory = os.path.dirname(os.path.abspath(script))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = name or os.path.splitext(os.path.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise StartupError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        log.error("importing %s failed", script, exc_info=True)
        raise StartupError(f"importing {script} failed: {type(exc).__name__}: {exc}") from exc
    return module
