"""Hosting functions of the image classifier (PyTorch CNN).

Request:  image/jpeg bytes (the notebook's ImagePredictor sends the file's bytes)
Response: {"class": "circle", "probability": 0.98}   (application/json)

The server decodes the JPEG into an RGB uint8 array (decompression bombs are a
400 before any pixel is decoded); predict_fn resizes it to what the network was
trained on and runs it on this worker's device. input_fn and output_fn are the
defaults.
"""

import json
import os

import numpy as np
import torch
from PIL import Image

from serving import ClientError

SIZE = 64


def model_fn(model_dir, context):
    model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location=context.device)
    with open(os.path.join(model_dir, "classes.json")) as f:
        classes = json.load(f)
    return {"net": model.eval(), "classes": classes}


def predict_fn(data, model, context):
    if not (isinstance(data, np.ndarray) and data.ndim == 3 and data.shape[2] == 3):
        raise ClientError("send an image (image/jpeg, image/png)", status_code=415)
    picture = Image.fromarray(data).resize((SIZE, SIZE), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(picture).transpose(2, 0, 1).copy())
    batch = pixels.unsqueeze(0).float().div(255).to(context.device)
    with torch.inference_mode():
        probabilities = torch.softmax(model["net"](batch), dim=1)[0].cpu()
    best = int(probabilities.argmax())
    return {"class": model["classes"][best], "probability": round(float(probabilities[best]), 4)}
