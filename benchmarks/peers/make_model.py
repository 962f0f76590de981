"""The model every server in the peers benchmark serves: a TorchScript MLP 64→256→256→10
(and, wider and deeper, the batching benchmark's).

Writes ``model.pt`` (TorchScript), ``payload.json`` (one row of 64 floats, the body every
request sends) and ``expected.json`` (the model's own output for it, to check each
server's answer) into the directory given. Seeded: every run makes the same model.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def make(out_dir: str, width: int = 256, hidden: int = 2, seed: int = 0) -> str:
    """An MLP 64 → ``hidden`` layers of ``width`` → 10."""
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.ReLU()]
    for _ in range(hidden - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()
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
    # make_model.py OUT_DIR [WIDTH [HIDDEN_LAYERS]]
    args = sys.argv[1:]
    print(make(args[0] if args else "build/peers/model",
               int(args[1]) if len(args) > 1 else 256, int(args[2]) if len(args) > 2 else 2))
