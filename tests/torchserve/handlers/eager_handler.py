"""An eager model (model.py and its state dict) with a handler that overrides
preprocess and postprocess: text "a,b,c,d" or a JSON list in, labels and scores out."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class EagerHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            if isinstance(value, (bytes, bytearray)):
                value = value.decode("utf-8")
            if isinstance(value, str):
                value = [float(x) for x in value.split(",")]
            rows.append(value)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        return [{"label": int(row.argmax()), "scores": [round(float(x), 5) for x in row]}
                for row in data]
