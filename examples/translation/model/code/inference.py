"""Hosting functions of the English → French translator (PyTorch sequence-to-sequence).

Request:  a JSON string, "the man is tall"     (application/json, the SDK's JSONSerializer)
Response: a JSON string, "l&apos;homme est grand": special characters are escaped
          HTML-style, as the notebook's fairseq server answers; the client unescapes
          them with html.unescape.
"""

import json
import os
import re

import torch

from seq2seq import UNK, Seq2Seq
from serving import ClientError

MAX_CHARACTERS = 1000
# Moses-style escaping, what fairseq's detokenizer writes.
ESCAPES = {"&": "&amp;", "'": "&apos;", '"': "&quot;", "<": "&lt;", ">": "&gt;"}


def model_fn(model_dir, context):
    with open(os.path.join(model_dir, "vocab.json")) as f:
        vocab = json.load(f)
    model = Seq2Seq(len(vocab["source"]), len(vocab["target"]))
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu",
                                     weights_only=True))
    return {"net": model.to(context.device).eval(),
            "source": {w: i for i, w in enumerate(vocab["source"])},
            "target": vocab["target"]}


def input_fn(input_data, content_type):
    if content_type != "application/json":
        raise ClientError(f"send a JSON string (application/json), not {content_type}",
                          status_code=415)
    try:
        text = json.loads(input_data)
    except ValueError as exc:
        raise ClientError(f"the body is not JSON: {exc}") from None
    if not isinstance(text, str) or not text.strip():
        raise ClientError('send the sentence as a JSON string: "the cat is black"')
    if len(text) > MAX_CHARACTERS:
        raise ClientError(f"at most {MAX_CHARACTERS} characters")
    return text


def tokenize(text):
    return re.findall(r"[\w']+|[?!.,]", text.lower())


def predict_fn(text, model, context):
    ids = [model["source"].get(word, UNK) for word in tokenize(text)]
    source = torch.tensor([ids], dtype=torch.long, device=context.device)
    words = [model["target"][i] for i in model["net"].translate(source)]
    return " ".join(words)


def output_fn(prediction, accept):
    escaped = "".join(ESCAPES.get(c, c) for c in prediction)
    return json.dumps(escaped, ensure_ascii=False), "application/json"
