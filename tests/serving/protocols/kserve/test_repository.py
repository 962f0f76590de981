"""Who may call the model repository extension: nobody when it is off, this machine's clients
with ``local``, anyone with ``any``; and the addresses in grpc's peer strings."""

from __future__ import annotations

import types

import pytest

from serving import errors
from serving.contract.models import ModelRepository
from serving.protocols.kserve.grpc_server import _peer_address
from serving.protocols.kserve.repository import Repository


def repository(tmp_path, mode: str) -> Repository:
    config = types.SimpleNamespace(repository_api=mode, model_version="1", model_store=None,
                                   multi_model_root=str(tmp_path))
    models = ModelRepository(str(tmp_path / "records"), build=lambda *a: None,
                             budget_bytes=1 << 30)
    return Repository(types.SimpleNamespace(config=config, models=models))


@pytest.mark.parametrize("mode, address, allowed", [
    ("off", "127.0.0.1", False), ("local", "127.0.0.1", True), ("local", "::1", True),
    ("local", "127.8.9.10", True), ("local", "10.0.0.5", False), ("local", "::ffff:10.0.0.5", False),
    ("local", None, False), ("local", "not an address", False), ("any", "10.0.0.5", True),
])
def test_who_may_call(tmp_path, mode, address, allowed):
    (tmp_path / "records").mkdir()
    found = repository(tmp_path, mode)
    if allowed:
        found.check_client(address)
        return
    with pytest.raises(errors.ClientError) as caught:
        found.check_client(address)
    assert caught.value.status_code == 403 and "--repository-api" in caught.value.message


@pytest.mark.parametrize("peer, address", [
    ("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"),
    ("ipv6:[fe80::1%25eth0]:80", "fe80::1%25eth0"), ("unix:/tmp/socket", None),
])
def test_grpc_peer_addresses(peer, address):
    assert _peer_address(peer) == address
