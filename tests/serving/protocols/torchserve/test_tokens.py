"""TorchServe's key file: its layout and mode, which header opens what, expiry, and a
renewal by one worker seen by another (two KeyFile objects on one file)."""

from __future__ import annotations

import json
import os

import pytest

from serving.protocols.torchserve.tokens import InvalidKeyException, KeyFile


def keys_of(path):
    return json.loads(path.read_text())


def rewrite(path, document) -> None:
    """The file replaced, as the server writes it (a new inode: seen at once, however
    soon after the last write)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


def test_the_file_is_torchserves_and_only_its_owner_reads_it(tmp_path):
    key_file = KeyFile.create(str(tmp_path / "key_file.json"), 60)
    document = keys_of(tmp_path / "key_file.json")
    assert set(document) == {"management", "inference", "API"}
    assert set(document["inference"]) == {"key", "expiration time"}
    assert document["inference"]["expiration time"].endswith("Z")
    assert (tmp_path / "key_file.json").stat().st_mode & 0o777 == 0o600
    key_file.remove()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "bearer {inference}",
                                    "{inference}", "Basic {inference}",
                                    "Bearer {management}", "Bearer {API}",
                                    "Bearer {inference}x"])
def test_only_bearer_and_the_right_key_open(tmp_path, header):
    key_file = KeyFile.create(str(tmp_path / "key_file.json"), 60)
    keys = {kind: entry["key"] for kind, entry in keys_of(tmp_path / "key_file.json").items()}
    key_file.check(f"Bearer {keys['inference']}", "inference")
    with pytest.raises(InvalidKeyException) as refused:
        key_file.check(None if header is None else header.format(**keys), "inference")
    assert refused.value.status_code == 400
    assert refused.value.to_dict() == {
        "code": 400, "type": "InvalidKeyException",
        "message": "Token Authorization failed. Token either incorrect, expired, or not "
                   "provided correctly"}


def test_keys_expire_and_a_renewal_reaches_every_worker(tmp_path):
    path = tmp_path / "key_file.json"
    first, second = KeyFile.create(str(path), 60), KeyFile(str(path), 60)
    old = keys_of(path)
    second.check(f"Bearer {old['management']['key']}", "management")
    expired = dict(old, management={**old["management"],
                                    "expiration time": "2020-01-01T00:00:00.000000Z"})
    rewrite(path, expired)
    with pytest.raises(InvalidKeyException):
        second.check(f"Bearer {old['management']['key']}", "management")
    second.check(f"Bearer {old['API']['key']}", "API")  # the API key does not expire
    first.renew("management")
    new = keys_of(path)
    assert new["management"]["key"] != old["management"]["key"]
    assert new["inference"] == old["inference"]  # only the kind asked for
    second.check(f"Bearer {new['management']['key']}", "management")
    with pytest.raises(InvalidKeyException):
        second.check(f"Bearer {old['management']['key']}", "management")


def test_an_edited_or_missing_file_opens_nothing(tmp_path):
    path = tmp_path / "key_file.json"
    key_file = KeyFile.create(str(path), 60)
    keys = keys_of(path)
    keys["inference"]["expiration time"] = "tomorrow"
    rewrite(path, keys)
    with pytest.raises(InvalidKeyException):
        key_file.check(f"Bearer {keys['inference']['key']}", "inference")
    path.unlink()
    with pytest.raises(InvalidKeyException):
        key_file.check(f"Bearer {keys['management']['key']}", "management")


def test_a_key_file_that_cannot_be_written_stops_the_start(tmp_path):
    from serving.errors import StartupError

    with pytest.raises(StartupError, match="--key-file"):
        KeyFile.create(str(tmp_path / "missing" / "key_file.json"), 60)
