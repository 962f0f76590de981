"""Train the example's image classifier on generated pictures, in seconds; write the model.

Run: python examples/image-classifier/make_model.py [MODEL_DIR]
Writes model.pt (TorchScript) and classes.json next to code/.
"""

import io
import json
import os
import random
import sys

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shapes import CLASSES, draw, jpeg  # noqa: E402

SIZE = 64


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(32, len(CLASSES)),
    )


def as_input(jpeg_bytes: bytes) -> np.ndarray:
    """What serving does to a request: decode, RGB, resize to SIZE."""
    picture = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB").resize((SIZE, SIZE),
                                                                      Image.BILINEAR)
    return np.asarray(picture).transpose(2, 0, 1).astype(np.float32) / 255


def main(model_dir: str) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    labels = [i % len(CLASSES) for i in range(600)]
    images = np.stack([as_input(jpeg(draw(CLASSES[label], rng))) for label in labels])
    x, y = torch.from_numpy(images), torch.tensor(labels)
    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(12):
        for batch in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"trained: loss {loss.item():.3f}, training accuracy {accuracy:.2f}")
    torch.jit.save(torch.jit.trace(model, x[:1]), os.path.join(model_dir, "model.pt"))
    with open(os.path.join(model_dir, "classes.json"), "w") as f:
        json.dump(CLASSES, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "model"))
