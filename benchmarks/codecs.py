"""Decode and encode throughput of every built-in content handler, small and large payloads.

Run: .venv-np2/bin/python benchmarks/codecs.py   (or `make bench`, which also runs
benchmarks/recordio_vs_sdk.py in the SDK's environment); with ``--float32``, only the
table of JSON float32 forms.

Each row times one handler on one payload, median of interleaved repeats; MB/s is
the encoded body size over the time. JSON also shows the standard library's
json module on the same payload, measured in the same run, as the baseline that
justified orjson.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import compare  # noqa: E402

from handlers.content import default_registry  # noqa: E402
from handlers.content.json import as_arrays  # noqa: E402
from handlers.content.recordio import Record, write_recordio  # noqa: E402

registry = default_registry()
rng = np.random.default_rng(0)


def payloads() -> list[tuple[str, str, object]]:
    """(media type, size label, object to encode)."""
    small = rng.normal(size=(1, 10)).astype(np.float32)
    large = rng.normal(size=(50_000, 30)).astype(np.float32)  # 6 MB as float32
    image_small = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    image_large = rng.integers(0, 256, size=(768, 1024, 3), dtype=np.uint8)  # noise: worst case
    out = []
    for media_type in ("application/json", "application/jsonlines", "text/csv",
                       "application/x-npy", "application/x-npz",
                       "application/x-recordio-protobuf"):
        out += [(media_type, "1×10", small), (media_type, "50000×30", large)]
    for media_type in ("image/jpeg", "image/png"):
        out += [(media_type, "64×64", image_small), (media_type, "1024×768", image_large)]
    return out


def request_body(media_type: str, obj: object) -> bytes:
    """The body a client sends: for recordio, features records as RecordSerializer writes."""
    handler = registry.get(media_type)
    if media_type != "application/x-recordio-protobuf":
        return handler.encode(obj)
    payloads = []
    for row in obj:
        record = Record()
        record.features["values"].float32_tensor.values.extend(row.tolist())
        payloads.append(record.SerializeToString())
    return write_recordio(payloads)


def main() -> None:
    print(f"numpy {np.__version__}; one process, median of 7 interleaved repeats\n")
    print("| type | payload | body bytes | decode ms | decode MB/s | encode ms | encode MB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for media_type, label, obj in payloads():
        handler = registry.get(media_type)
        body = request_body(media_type, obj)
        times = compare({"decode": lambda: handler.decode(body),
                         "encode": lambda: handler.encode(obj)}, repeats=7)
        mb = len(body) / 1e6
        print(f"| {media_type} | {label} | {len(body):,} | {times['decode'] * 1e3:.3f} | "
              f"{mb / times['decode']:.0f} | {times['encode'] * 1e3:.3f} | "
              f"{mb / times['encode']:.0f} |")

    print("\nJSON against the standard library (same payload, same run):\n")
    print("| payload | step | orjson (ours) ms | json module ms | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    handler = registry.get("application/json")
    for label, array in (("1×10", rng.normal(size=(1, 10))), ("50000×30", rng.normal(size=(50_000, 30)))):
        body = handler.encode(array)
        enc = compare({"ours": lambda: handler.encode(array),
                       "stdlib": lambda: json.dumps(array.tolist()).encode()})
        dec = compare({"ours": lambda: handler.decode(body),
                       "stdlib": lambda: as_arrays(json.loads(body))})
        for step, t in (("encode", enc), ("decode", dec)):
            print(f"| {label} | {step} | {t['ours'] * 1e3:.3f} | {t['stdlib'] * 1e3:.3f} | "
                  f"{t['stdlib'] / t['ours']:.1f}× |")

    float32_forms()


def float32_forms() -> None:
    """The cost of writing float32 as AWS's containers do (SERVING_JSON_FLOAT32)."""
    from handlers.content.json import write_float32_as

    print("\nJSON float32 forms on the 50000×30 float32 answer (same payload, same run):\n")
    print("| form | encode ms | body bytes | × shortest |")
    print("| --- | ---: | ---: | ---: |")
    handler = registry.get("application/json")
    array = rng.normal(size=(50_000, 30)).astype(np.float32)
    nested = {"predictions": [array]}  # an array inside a dict: orjson calls us for it

    def form(name: str, target: object):
        def encode() -> bytes:
            write_float32_as(name)
            return handler.encode(target)
        return encode

    cases = {"shortest (before)": form("shortest", array),
             "float64 (default)": form("float64", array),
             "float64, in a dict": form("float64", nested),
             "json.dumps(tolist()) (AWS)": lambda: json.dumps(array.tolist()).encode()}
    times = compare(cases)
    sizes = {name: len(fn()) for name, fn in cases.items()}
    write_float32_as("float64")
    base = times["shortest (before)"]
    for name in cases:
        print(f"| {name} | {times[name] * 1e3:.1f} | {sizes[name]:,} | "
              f"{times[name] / base:.2f}× |")

    print("\nCSV on the same answer: AWS's np.savetxt(fmt=\"%s\") (ours now) against the "
          "%.9g we wrote before:\n")
    print("| form | encode ms | body bytes | × before |")
    print("| --- | ---: | ---: | ---: |")
    csv_handler = registry.get("text/csv")

    def before() -> bytes:
        stream = io.StringIO()
        np.savetxt(stream, array, delimiter=",", fmt="%.9g")
        return stream.getvalue().encode("utf-8")

    cases = {"%.9g (before)": before, "%s (AWS's, now)": lambda: csv_handler.encode(array)}
    times = compare(cases, repeats=5)
    for name, fn in cases.items():
        print(f"| {name} | {times[name] * 1e3:.1f} | {len(fn()):,} | "
              f"{times[name] / times['%.9g (before)']:.2f}× |")


if __name__ == "__main__":
    float32_forms() if sys.argv[1:] == ["--float32"] else main()
