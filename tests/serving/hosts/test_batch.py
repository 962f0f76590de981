"""Batch transform without a server: files cut into records, packed into requests under
MaxPayloadInMB, and answered by the example's pipeline in this process."""

from __future__ import annotations

import json

import pytest

from serving.config import Config
from serving.hosts.batch import (
    Transform,
    _Failed,
    records_of,
    requests_of,
    transform_local,
)
from tests.server_helpers import REPO

EXAMPLE = REPO / "examples" / "numpy-linear" / "model"

pytestmark = pytest.mark.usefixtures("own_environment")


def test_lines_are_records_and_multi_record_packs_them_under_the_limit():
    records = records_of(b"[1,2]\n\n[3,4]\r\n[5,6]\n", "Line")
    assert records == [b"[1,2]", b"[3,4]", b"[5,6]"]
    packed = requests_of(records, Transform(split_type="Line", batch_strategy="MultiRecord",
                                            max_payload_bytes=11))
    assert packed == [b"[1,2]\n[3,4]", b"[5,6]"]  # 11 bytes at most each, joined by lines
    single = requests_of(records, Transform(split_type="Line", batch_strategy="SingleRecord"))
    assert single == records
    with pytest.raises(_Failed) as failed:
        requests_of([b"x" * 20], Transform(max_payload_bytes=10))
    assert failed.value.status == 413


def test_recordio_records_are_framed_again_one_by_one():
    from handlers.content.recordio import read_recordio, write_recordio

    records = records_of(write_recordio([b"one", b"two"]), "RecordIO")
    assert [list(read_recordio(r)) for r in records] == [[b"one"], [b"two"]]
    with pytest.raises(_Failed) as failed:
        records_of(b"not recordio", "RecordIO")
    assert failed.value.status == 400


def test_a_directory_is_transformed_and_a_bad_file_fails_alone(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "good.csv").write_text("1,2,3\n4,5,6\n\n7,8,9\n")
    (source / "bad.csv").write_text("1,x,3\n")
    config = Config.load(["--model-dir", str(EXAMPLE)], {})
    results = transform_local(config, Transform(split_type="Line", assemble_with="Line",
                                                      content_type="text/csv"),
                              str(source), str(out))
    by_path = {r.path: r for r in results}
    good, bad = by_path["sub/good.csv"], by_path["bad.csv"]
    assert good.ok and (good.records, good.requests) == (3, 1)  # MultiRecord: one request
    assert not bad.ok and bad.status == 400
    assert not (out / "bad.csv.out").exists()
    answer = (out / "sub" / "good.csv.out").read_text()
    assert answer.endswith("\n") and len(json.loads(answer)) == 3
