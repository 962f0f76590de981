"""TorchServe 0.12 handler for the peers benchmark: JSON rows in, JSON rows out.

BaseHandler loads the TorchScript file the archive carries; this handler only turns each
request's JSON body into a tensor and the output back into lists.
"""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class MLPHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)  # one thread per worker, as every server here
        super().initialize(context)

    def preprocess(self, data):
        rows = []
        for request in data:
            body = request.get("body") or request.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.tensor(body, dtype=torch.float32))
        return rows

    def inference(self, rows, *args, **kwargs):
        with torch.inference_mode():
            return [self.model(x) for x in rows]

    def postprocess(self, outputs):
        return [out.tolist() for out in outputs]
