"""Hosting functions of the Chainer sentiment classifier (the notebook's, in spirit).

Request:  an NPY array of sentences (the SDK's NumpySerializer, Chainer's default)
Response: an NPY array of rows [processed sentence, prediction, score], as strings:
          no pickling either way (the SDK's NumpyDeserializer loads it with
          allow_pickle=False).
input_fn and output_fn are the server's defaults (NPY in, NPY out).
"""

import json
import os
import re

import chainer
import chainer.functions as F
import numpy as np

from net import SentimentNet
from serving import ClientError

LABELS = {0: "negative", 1: "positive"}


def model_fn(model_dir):
    with open(os.path.join(model_dir, "model_info.json")) as f:
        info = json.load(f)
    vocab = np.load(os.path.join(model_dir, "vocab.npy"), allow_pickle=False)
    model = SentimentNet(len(vocab), info["units"], info["dropout"])
    chainer.serializers.load_npz(os.path.join(model_dir, "model.npz"), model)
    model.word_ids = {word: i for i, word in enumerate(vocab.tolist())}
    return model


def tokenize(sentence):
    return re.findall(r"[a-z']+", sentence.lower())


def predict_fn(input_data, model, context):
    sentences = np.asarray(input_data)
    if sentences.dtype.kind not in "US" or sentences.ndim != 1:
        raise ClientError("send a 1-D array of sentences (strings)", status_code=422)
    texts = [s.decode() if isinstance(s, bytes) else str(s) for s in sentences.tolist()]
    words = [tokenize(text) for text in texts]
    length = max((len(w) for w in words), default=0) or 1
    ids = np.full((len(texts), length), -1, dtype=np.int32)
    for row, sentence in enumerate(words):
        known = [model.word_ids[w] for w in sentence if w in model.word_ids]
        ids[row, :len(known)] = known
    if context.device.startswith("cuda"):
        ids = chainer.get_device(f"@cupy:{context.device.partition(':')[2] or 0}").send(ids)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        probabilities = chainer.backends.cuda.to_cpu(F.softmax(model(ids)).array)
    rows = []
    for sentence, p in zip(words, probabilities):
        label = int(p.argmax())
        rows.append([" ".join(sentence), LABELS[label], f"{p[label]:.4f}"])
    return np.array(rows, dtype=str)  # a string array: NPY without pickles
