"""MXNet's own RecordIO writer and reader against a running server.

Runs with an interpreter that has mxnet (the test environment ``.venv``), in a
process of its own; it uses the Record schema from ``handlers``. Usage:
``python mxnet_recordio_client.py URL``.

It writes records whose payloads hold the RecordIO magic number at 4-aligned
offsets, which MXRecordIO splits into continuation parts (cflag 1, 2, 3), posts
the file, and reads the answer back with MXRecordIO. Prints one JSON object.
"""

import json
import struct
import sys
import tempfile
import urllib.request

import mxnet as mx
import numpy as np

from handlers.content.recordio import Record

MAGIC = 0xCED7230A
MAGIC_FLOAT = float(np.frombuffer(struct.pack("<I", MAGIC), dtype="<f4")[0])


def record_with_magic() -> tuple[bytes, list[float]]:
    """A dense float32 record whose payload holds the magic at 4-aligned offsets, twice."""
    for lead in range(4):
        values = [1.0] * lead + [MAGIC_FLOAT, 2.0, MAGIC_FLOAT]
        record = Record()
        record.features["values"].float32_tensor.values.extend(values)
        payload = record.SerializeToString()
        magic = struct.pack("<I", MAGIC)
        at = [i for i in range(0, len(payload), 4) if payload[i:i + 4] == magic]
        if len(at) == 2:
            return payload, values
    raise AssertionError("no alignment put the magic on a 4-byte boundary")


def main(url: str) -> None:
    payload, values = record_with_magic()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/request.rec"
        writer = mx.recordio.MXRecordIO(path, "w")
        for _ in range(3):
            writer.write(payload)
        writer.close()
        body = open(path, "rb").read()
        flags = []
        offset = 0
        while offset < len(body):
            lrec = struct.unpack_from("<I", body, offset + 4)[0]
            flags.append(lrec >> 29)
            offset += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)

        request = urllib.request.Request(url, data=body, headers={
            "Content-Type": "application/x-recordio-protobuf",
            "Accept": "application/x-recordio-protobuf"})
        with urllib.request.urlopen(request) as response:
            answer = response.read()
        with open(f"{tmp}/answer.rec", "wb") as f:
            f.write(answer)
        reader = mx.recordio.MXRecordIO(f"{tmp}/answer.rec", "r")
        rows = []
        while (item := reader.read()) is not None:
            rows.append(list(Record.FromString(item).label["values"].float32_tensor.values))
    print(json.dumps({"sent": values, "flags": flags, "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1])
