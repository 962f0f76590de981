"""recordio-protobuf: our decoder against the SageMaker SDK v2's own ``read_records``.

Run in the SDK's environment, with the repository on the path:
    PYTHONPATH=. .venv-sdk/bin/python benchmarks/recordio_vs_sdk.py
(`make bench` does this). Both read the same 100 000-row float32 body, written by
the SDK's ``write_numpy_to_dense_tensor`` (what ``RecordSerializer`` sends), in
the same process, in turns. Ratios above 1 mean ours is faster.
"""

from __future__ import annotations

import io
import os
import sys

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import logging  # noqa: E402

logging.disable(logging.INFO)

import numpy as np  # noqa: E402
from _timing import compare  # noqa: E402
from sagemaker.amazon.common import read_records, write_numpy_to_dense_tensor  # noqa: E402

from handlers.content.recordio import RecordIOHandler  # noqa: E402


def sdk_to_array(body: bytes, kind: str = "float32_tensor") -> np.ndarray:
    """What a user of the SDK reader must do to get the array a model takes."""
    records = read_records(io.BytesIO(body))
    return np.array([getattr(r.features["values"], kind).values for r in records])


def main() -> None:
    import google.protobuf

    handler = RecordIOHandler()
    print(f"numpy {np.__version__}, protobuf {google.protobuf.__version__}; "
          f"median of 5 interleaved repeats\n")
    print("| rows × columns, dtype | body MB | ours ms | SDK read_records ms | ratio | "
          "SDK read_records + array ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cases = [(100_000, 10, "float32"), (100_000, 1, "float32"), (1_000, 100, "float32"),
             # int32 tensors with values of mixed varint sizes: the record-by-record path
             (100_000, 10, "int")]
    for rows, cols, dtype in cases:
        generator = np.random.default_rng(0)
        if dtype == "int":
            array = generator.integers(0, 1000, size=(rows, cols))
        else:
            array = generator.normal(size=(rows, cols)).astype(np.float32)
        kind = "int32_tensor" if dtype == "int" else "float32_tensor"
        buf = io.BytesIO()
        write_numpy_to_dense_tensor(buf, array)
        body = buf.getvalue()
        assert np.array_equal(handler.decode(body), array)
        assert np.array_equal(sdk_to_array(body, kind), array)
        t = compare({
            "ours": lambda: handler.decode(body),
            "sdk": lambda: read_records(io.BytesIO(body)),
            "sdk_array": lambda: sdk_to_array(body, kind),
        }, repeats=5, min_seconds=0.2)
        print(f"| {rows:,} × {cols} {dtype} | {len(body) / 1e6:.2f} | {t['ours'] * 1e3:.3f} | "
              f"{t['sdk'] * 1e3:.3f} | {t['sdk'] / t['ours']:.0f}× | "
              f"{t['sdk_array'] * 1e3:.3f} | {t['sdk_array'] / t['ours']:.0f}× |")


if __name__ == "__main__":
    main()
