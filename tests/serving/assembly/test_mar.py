"""TorchServe model archives: the layout torch-model-archiver 0.12 writes (its manifest
as it wrote it here), unpacked; and the archives that must be refused before a byte of
them lands outside the destination."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import pytest

from serving.assembly.mar import (
    MANIFEST,
    ArchiveError,
    read_manifest,
    settings_from_config,
    unpack,
)

#: MAR-INF/MANIFEST.json as torch-model-archiver 0.12.0 wrote it for
#: `--model-name lin --version 1.0 --serialized-file model.pt --handler handler.py
#: --extra-files extra.txt --config-file config.yaml` (extra files go to the root unnamed).
ARCHIVER_MANIFEST = {
    "createdOn": "02/12/2026 17:34:20",
    "runtime": "python",
    "model": {"modelName": "lin", "serializedFile": "model.pt", "handler": "handler.py",
              "modelVersion": "1.0", "configFile": "config.yaml"},
    "archiverVersion": "0.12.0",
}
CONFIG = "batchSize: 4\nmaxBatchDelay: 50\nresponseTimeout: 30\nminWorkers: 2\n"


def make_mar(path, files: dict[str, bytes | str], manifest=ARCHIVER_MANIFEST,
             links: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
        if manifest is not None:
            archive.writestr(MANIFEST, json.dumps(manifest))
    return str(path)


def good_files():
    return {"model.pt": b"\x00" * 100, "extra.txt": "x\n", "config.yaml": CONFIG,
            "handler.py": "def handle(data, context):\n    return [1]\n"}


def test_the_archivers_layout_unpacks_and_its_config_maps_onto_settings(tmp_path):
    mar = make_mar(tmp_path / "lin.mar", good_files())
    manifest = unpack(mar, str(tmp_path / "out"), max_bytes=10_000)
    assert manifest.model_name == "lin" and manifest.version == "1.0"
    assert manifest.serialized_file == "model.pt" and manifest.handler == "handler.py"
    assert sorted(os.listdir(tmp_path / "out")) == ["MAR-INF", "config.yaml", "extra.txt",
                                                     "handler.py", "model.pt"]
    assert settings_from_config(str(tmp_path / "out"), manifest) == {
        "max_batch_size": 4, "max_batch_delay_ms": 50, "request_timeout": 30, "workers": 2}
    # An unpacked archive (a directory) reads the same.
    assert read_manifest(str(tmp_path / "out")) == manifest
    assert read_manifest(mar) == manifest


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil", "a/../../evil", "C:evil",
                                  "a\\..\\evil"])
def test_an_entry_outside_the_archive_is_refused(tmp_path, name):
    mar = make_mar(tmp_path / "bad.mar", {**good_files(), name: "x"})
    with pytest.raises(ArchiveError, match="outside|backslash"):
        unpack(mar, str(tmp_path / "out"), max_bytes=10_000)
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "evil").exists()


def test_a_symbolic_link_is_refused(tmp_path):
    mar = make_mar(tmp_path / "link.mar", good_files(), links={"data": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="symbolic link"):
        unpack(mar, str(tmp_path / "out"), max_bytes=10_000)


def test_size_and_bombs_are_bounded_by_what_is_decompressed(tmp_path):
    mar = make_mar(tmp_path / "big.mar", {**good_files(), "weights.bin": b"\x01" * 50_000})
    with pytest.raises(ArchiveError, match="more than 20000 bytes"):
        unpack(mar, str(tmp_path / "out"), max_bytes=20_000)
    bomb = make_mar(tmp_path / "bomb.mar", {**good_files(), "zeros": b"\x00" * 5_000_000})
    with pytest.raises(ArchiveError, match="inflates"):
        unpack(bomb, str(tmp_path / "out2"), max_bytes=10**9)


@pytest.mark.parametrize("manifest, message", [
    (None, "no MAR-INF"),
    ({"model": {}}, "modelName"),
    ({"model": {"modelName": "m", "serializedFile": "../model.pt"}}, "outside"),
    ({"model": {"modelName": "m", "serializedFile": "absent.pt"}}, "absent.pt, not in"),
    ({"model": {"modelName": "m", "handler": 3}}, "must be a string"),
])
def test_a_manifest_that_cannot_be_served_says_why(tmp_path, manifest, message):
    mar = make_mar(tmp_path / "m.mar", good_files(), manifest=manifest)
    with pytest.raises(ArchiveError, match=message):
        unpack(mar, str(tmp_path / "out"), max_bytes=10_000)


def test_not_a_zip_and_bad_config_values(tmp_path):
    (tmp_path / "x.mar").write_bytes(b"PK not really")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        read_manifest(str(tmp_path / "x.mar"))
    files = {**good_files(), "config.yaml": "batchSize: 0\n"}
    manifest = unpack(make_mar(tmp_path / "c.mar", files), str(tmp_path / "out"), 10_000)
    with pytest.raises(ArchiveError, match="batchSize must be a whole number"):
        settings_from_config(str(tmp_path / "out"), manifest)
