"""serve batch --ray: the files shared out across Ray Data actors give the same bytes as the
job run in one process, and the same failures."""

from __future__ import annotations

import filecmp

from tests.integration.test_batch_transform import rows_of, run_batch


def test_ray_data_job_matches_the_local_job_byte_for_byte(tmp_path):
    root = tmp_path / "in"
    (root / "part").mkdir(parents=True)
    for number in range(12):  # 12 files of 25 records: 300 records
        rows = rows_of(25, number)
        (root / "part" / f"{number:02}.csv").write_text(
            "".join(",".join(map(str, row)) + "\n" for row in rows))
    (root / "bad.csv").write_text("1,2\n3,4\n")
    flags = ("--split-type", "Line", "--batch-strategy", "MultiRecord", "--content-type",
             "text/csv", "--accept", "text/csv", "--assemble-with", "Line")
    local, local_summary = run_batch(root, tmp_path / "local", *flags)
    ray, ray_summary = run_batch(root, tmp_path / "ray", *flags, "--ray", "--ray-actors", "2",
                                 "--ray-num-cpus", "0.5")
    assert local.returncode == ray.returncode == 1, ray.stderr[-4000:]
    assert ray_summary == local_summary
    assert local_summary["records"] == 302 and local_summary["failed"] == 1
    assert local_summary["failures"][0]["file"] == "bad.csv"
    names = sorted(p.relative_to(tmp_path / "local").as_posix()
                   for p in (tmp_path / "local").rglob("*.out"))
    assert len(names) == 12
    assert sorted(p.relative_to(tmp_path / "ray").as_posix()
                  for p in (tmp_path / "ray").rglob("*.out")) == names
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "local", tmp_path / "ray", names,
                                               shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == 12
