"""serve batch: a directory of files through the pipeline, as a SageMaker Batch Transform job
runs the container (split, batch strategy, payload limit, assemble), one .out per file,
failures per file."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from handlers.content.recordio import read_recordio, write_recordio
from tests.server_helpers import REPO, server_env

MODEL = REPO / "examples" / "numpy-linear" / "model"


def linear(rows) -> np.ndarray:
    with np.load(MODEL / "linear.npz") as arrays:
        return np.asarray(rows, dtype=np.float64) @ arrays["weight"] + arrays["bias"]


def run_batch(input_dir, output_dir, *flags, model=MODEL):
    result = subprocess.run([sys.executable, "-m", "serving", "batch", str(input_dir),
                             str(output_dir), "--model-dir", str(model), *flags],
                            capture_output=True, text=True, timeout=300, env=server_env(),
                            cwd=REPO)
    summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() \
        else None
    return result, summary


def rows_of(count: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-5, 5), 3) for _ in range(3)] for _ in range(count)]


@pytest.fixture
def csv_inputs(tmp_path):
    """Three CSV files of 100 rows each (one in a sub-folder)."""
    root = tmp_path / "in"
    (root / "more").mkdir(parents=True)
    files = {}
    for number, name in enumerate(["a.csv", "b.csv", "more/c.csv"]):
        rows = rows_of(100, number)
        (root / name).write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
        files[name] = rows
    return root, files


@pytest.mark.parametrize("strategy", ["SingleRecord", "MultiRecord"])
def test_line_split_csv_gives_one_answer_per_record(csv_inputs, tmp_path, strategy):
    root, files = csv_inputs
    result, summary = run_batch(root, tmp_path / "out", "--split-type", "Line",
                                "--batch-strategy", strategy, "--content-type", "text/csv",
                                "--accept", "text/csv", "--assemble-with", "Line")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["files"] == 3 and summary["records"] == 300 and summary["failed"] == 0
    # One request a record, or all 100 rows of a file in one (well under 6 MB).
    assert summary["requests"] == (300 if strategy == "SingleRecord" else 3)
    for name, rows in files.items():
        text = (tmp_path / "out" / (name + ".out")).read_text()
        got = np.array([[float(v) for v in line.split(",")]
                        for line in text.splitlines() if line])
        assert np.allclose(got, linear(rows)), name
    assert "3/3 files, 300 records, 0 failed" in result.stderr  # the progress bar's last line


def test_multi_record_respects_max_payload(csv_inputs, tmp_path):
    root, files = csv_inputs
    # 0.001 MiB: about 1 KB, some 50 rows a request.
    result, summary = run_batch(root, tmp_path / "out", "--split-type", "Line",
                                "--content-type", "text/csv", "--accept", "text/csv",
                                "--max-payload-mb", "0.001")
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = [len(line) + 1 for line in (root / "a.csv").read_text().splitlines()]
    assert 3 * (sum(sizes) // 1048 + 1) <= summary["requests"] < 300
    # AssembleWith None: the CSV answers one after another, each ending its rows.
    text = (tmp_path / "out" / "a.csv.out").read_text()
    got = np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])
    assert np.allclose(got, linear(files["a.csv"]))


def test_json_files_whole_and_failures_reported_per_file(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.json").write_text(json.dumps(rows_of(5, 1)))
    (root / "wrong-shape.json").write_text("[[1, 2]]")
    (root / "not-json.json").write_text("[[1, 2")
    (root / "big.json").write_text(json.dumps(rows_of(2000, 2)))  # ~60 KB
    result, summary = run_batch(root, tmp_path / "out", "--max-payload-mb", "0.01")
    assert result.returncode == 1
    failures = {f["file"]: f for f in summary["failures"]}
    assert set(failures) == {"wrong-shape.json", "not-json.json", "big.json"}
    assert failures["wrong-shape.json"]["status"] == 422
    assert failures["not-json.json"]["status"] == 400
    assert failures["big.json"]["status"] == 413 and "MaxPayloadInMB" in failures["big.json"]["error"]
    assert "FAILED not-json.json: 400" in result.stderr
    # Only the good file has an answer: the others none, not a partial one.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json.out"]
    assert np.allclose(json.loads((tmp_path / "out" / "good.json.out").read_text()),
                       linear(rows_of(5, 1)))


def test_recordio_split_sends_records_framed(tmp_path):
    """SplitType RecordIO: each request is RecordIO again (one record, or several); a user
    input_fn sees the framing and answers one line per record."""
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(
        "from handlers.content.recordio import read_recordio\n"
        "def model_fn(model_dir):\n    return None\n"
        "def input_fn(body, content_type):\n    return read_recordio(body)\n"
        "def predict_fn(records, model):\n    return [len(r) for r in records]\n"
        "def output_fn(lengths, accept):\n"
        "    return ''.join(f'{n}\\n' for n in lengths).encode(), 'text/plain'\n")
    root = tmp_path / "in"
    root.mkdir()
    payloads = [bytes(range(n % 256)) * (1 + n // 256) for n in range(1, 60)]
    (root / "data.rec").write_bytes(write_recordio(payloads))
    (root / "broken.rec").write_bytes(write_recordio(payloads[:3])[:-5])
    for strategy, requests in (("SingleRecord", len(payloads)), ("MultiRecord", 1)):
        out = tmp_path / strategy
        result, summary = run_batch(root, out, "--split-type", "RecordIO", "--batch-strategy",
                                    strategy, "--content-type", "application/x-recordio",
                                    "--accept", "text/plain", model=model)
        assert result.returncode == 1, result.stderr[-3000:]
        assert summary["failures"][0]["file"] == "broken.rec"
        assert summary["failures"][0]["status"] == 400
        assert summary["requests"] == requests
        lengths = [int(n) for n in (out / "data.rec.out").read_text().split()]
        assert lengths == [len(p) for p in payloads]
    assert read_recordio(write_recordio(payloads)) == payloads


def test_bad_settings_exit_2(tmp_path):
    result, _ = run_batch(tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and "not a directory" in result.stderr
