"""The wire protocols, each an adapter over the invocation service (:mod:`~serving.protocols.base`):
SageMaker's hosting contract (:mod:`~serving.protocols.sagemaker`), TorchServe's inference and
management APIs (:mod:`~serving.protocols.torchserve`), KServe's v1 and v2 over REST
(:mod:`~serving.protocols.kserve`) and the Open Inference Protocol over gRPC
(:mod:`~serving.protocols.kserve.grpc_server`). The app mounts what :data:`PROTOCOLS` lists, in order: a new
protocol is one module and one line here.
"""

from __future__ import annotations

import importlib
import typing as t

if t.TYPE_CHECKING:
    from serving.protocols.base import Protocol, Server

__all__ = ["PROTOCOLS", "adapters"]

#: ``module:class`` of each protocol's adapter. The first writes the errors of every path no
#: other protocol claims (its ``error_paths``).
PROTOCOLS = (
    "serving.protocols.sagemaker:SageMaker",
    "serving.protocols.torchserve:TorchServe",
    "serving.protocols.kserve:KServe",
    "serving.protocols.kserve.grpc_server:KServeGrpc",
)


def adapters(server: Server) -> list[Protocol]:
    """Every protocol's adapter for ``server``, in :data:`PROTOCOLS`' order."""
    found = []
    for entry in PROTOCOLS:
        module, _, name = entry.partition(":")
        found.append(getattr(importlib.import_module(module), name)(server))
    return found
