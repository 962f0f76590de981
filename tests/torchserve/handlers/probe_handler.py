"""A TorchServe handler that answers with what it was given: its items' keys, values and
types, the headers and system properties it sees; a request's ``mode`` makes it set a
status, a content type, answer text, raise, or answer once too few."""

import json


def _describe(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": "bytes", "value": bytes(value).decode("latin-1")}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    return {"type": type(value).__name__, "value": value}

def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        headers = context.get_all_request_header(idx)
        mode = None
        for key in ("body", "data"):
            v = row.get(key)
            if isinstance(v, dict) and "mode" in v:
                mode = v["mode"]
        answer = {"keys": sorted(row), "values": {k: _describe(v) for k, v in row.items()},
                  "headers": {k: v for k, v in headers.items()},
                  "request_id_type": type(context.get_request_id(idx)).__name__,
                  "props": {k: v for k, v in context.system_properties.items() if k != "model_dir"},
                  "model_name": context.model_name, "batch": len(data)}
        if mode == "status":
            context.set_response_status(code=418, phrase="teapot", idx=idx)
        if mode == "ctype":
            context.set_response_content_type(idx, "application/x-probe")
            out.append(b"raw-bytes")
            continue
        if mode == "text":
            out.append("plain text")
            continue
        if mode == "raise":
            raise ValueError("boom")
        out.append(answer)
    if any(isinstance(r.get("body"), dict) and r["body"].get("mode") == "short" for r in data):
        return out[:-1]
    return out
