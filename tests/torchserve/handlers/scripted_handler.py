"""TorchServe's BaseHandler on a TorchScript model: only preprocess is ours (rows of
four numbers, from JSON); BaseHandler loads the model, runs it and writes the rows."""

import torch
from ts.torch_handler.base_handler import BaseHandler


class ScriptedHandler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)
