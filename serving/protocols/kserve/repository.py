"""The Open Inference Protocol's model repository extension, over REST and gRPC: the models a
repository holds (index), and loading and unloading them by name — the capability SageMaker's
``/models`` and TorchServe's management API give, on the same models
(:class:`~serving.contract.models.ModelRepository`: a load in one worker reaches the others).

The repository is the model store (``--model-store``: ``<name>.mar``, or an unpacked archive
``<name>/MAR-INF``) or, on a SageMaker multi-model endpoint, ``--multi-model-root``
(``<name>/``, a model directory). A model is loaded from there by its name only: a client
names no path.

**Closed by default.** ``--repository-api`` is ``off`` unless the operator sets it: ``local``
answers only clients on the loopback address (a sidecar in the same pod, as KServe's
model-mesh puller is), ``any`` whoever reaches the port. Off, or from another address, the
calls are a 403 (PERMISSION_DENIED over gRPC) that says which setting opens them; the index
is a read and answers under the same rule, since it tells what could be loaded.
"""

from __future__ import annotations

import ipaddress
import os
import typing as t

from serving import errors
from serving.assembly.mar import MANIFEST, ArchiveError, read_manifest
from serving.contract.models import ModelRepository, valid_model_name

if t.TYPE_CHECKING:
    from serving.protocols.base import Server

__all__ = ["EXTENSION", "Repository"]

#: The extension's name in the server metadata (Triton's).
EXTENSION = "model_repository"


class Repository:
    """The extension's calls, whatever transport asked (see the module)."""

    def __init__(self, server: Server) -> None:
        config = server.config
        self.mode = config.repository_api
        self.model_version = config.model_version
        self.models = server.models
        if config.model_store is not None:
            self.root, self.archives = config.model_store, True
        else:
            self.root, self.archives = config.multi_model_root, False

    @property
    def on(self) -> bool:
        return self.mode != "off" and isinstance(self.models, ModelRepository)

    def check_client(self, address: str | None) -> None:
        """Refuse (403) a call the settings do not let ``address`` make."""
        if not self.on:
            raise errors.ClientError(
                "the model repository extension is off: set --repository-api local (or "
                "SERVING_REPOSITORY_API) on a server with --model-store or --multi-model",
                status_code=403)
        if self.mode == "local" and not _loopback(address):
            raise errors.ClientError(
                f"the model repository extension answers only this machine's clients "
                f"(--repository-api local), not {address}", status_code=403)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model of the repository and every loaded one: name, version, state
        (``READY`` loaded, ``UNAVAILABLE`` not), reason."""
        repository = t.cast(ModelRepository, self.models)
        loaded = {p["modelName"] for p in repository.page(None, 10**6)["models"]}
        names = set(self._on_disk()) | loaded
        found = []
        for name in sorted(names):
            if name in loaded:
                found.append({"name": name, "version": self._version(repository, name),
                              "state": "READY", "reason": ""})
            elif not ready_only:
                found.append({"name": name, "version": "", "state": "UNAVAILABLE",
                              "reason": "not loaded"})
        return found

    def load(self, name: str) -> None:
        """Load ``name`` from the repository in every worker; a model loaded already stays
        as it is."""
        path = self._path(name)
        repository = t.cast(ModelRepository, self.models)
        try:
            repository.load(name, path)
        except errors.Conflict:
            pass  # loaded already: what load asks for is so

    def _version(self, repository: ModelRepository, name: str) -> str:
        """A loaded model's version, as its pipeline will have it, read without loading it
        in this worker."""
        if self.archives:
            try:
                found = read_manifest(repository.entry(name).url).version
            except (errors.ServingError, ArchiveError, OSError):
                found = None
            if found:
                return found
        return self.model_version

    def unload(self, name: str) -> None:
        t.cast(ModelRepository, self.models).unload(name)

    def _path(self, name: str) -> str:
        if not valid_model_name(name):
            raise errors.BadRequest("a model's name is 1-255 characters: letters, digits and "
                                    "._+=- (not starting with one of those)")
        path = self._on_disk().get(name)
        if path is None:
            raise errors.NotFound(f"the repository {self.root} has no model {name}")
        return path

    def _on_disk(self) -> dict[str, str]:
        """The models of the repository directory by name, and where each is."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return {}
        found: dict[str, str] = {}
        for entry in entries:
            if self.archives:
                if entry.is_file() and entry.name.endswith(".mar"):
                    found[entry.name[:-4]] = entry.path
                elif entry.is_dir() and os.path.isfile(os.path.join(entry.path, MANIFEST)):
                    found[entry.name] = entry.path
            elif entry.is_dir() and not entry.name.startswith("."):
                found[entry.name] = entry.path
        return {name: path for name, path in found.items() if valid_model_name(name)}


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
