"""The model every server in the peers benchmark serves: a TorchScript MLP 64→256→256→10.

Writes ``model.pt`` (TorchScript), ``payload.json`` (one row of 64 floats, the body every
request sends) and ``expected.json`` (the model's own output for it, to check each
server's answer) into the directory given. Seeded: every run makes the same model.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def make(out_dir: str, width: int = 256, seed: int = 0) -> str:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).eval()
    path = os.path.join(out_dir, "model.pt")
    torch.jit.script(model).save(path)
    row = [round(float(x), 4) for x in torch.rand(64)]
    with open(os.path.join(out_dir, "payload.json"), "w") as f:
        json.dump([row], f)
    with torch.no_grad():
        expected = model(torch.tensor([row])).tolist()
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)
    return path


if __name__ == "__main__":
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    print(make(sys.argv[1] if len(sys.argv) > 1 else "build/peers/model", width))
