"""Train the example's sentiment classifier (Chainer) in seconds and write its model directory.

Run: SETUPTOOLS_USE_DISTUTILS=stdlib python examples/sentiment/make_model.py [MODEL_DIR]
Writes model.npz (chainer.serializers.save_npz), vocab.npy and model_info.json.
"""

import json
import os
import sys

os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")  # only helps if set before start

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "model", "code"))
from inference import tokenize  # noqa: E402
from net import SentimentNet  # noqa: E402


def main(model_dir: str) -> None:
    np.random.seed(0)
    with open(os.path.join(HERE, "data", "sentences.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    labels = np.array([1 if label == "1" else 0 for label, _ in rows], dtype=np.int32)
    words = [tokenize(text) for _, text in rows]
    vocab = sorted({w for sentence in words for w in sentence})
    index = {w: i for i, w in enumerate(vocab)}
    length = max(len(w) for w in words)
    ids = np.full((len(words), length), -1, dtype=np.int32)
    for row, sentence in enumerate(words):
        ids[row, :len(sentence)] = [index[w] for w in sentence]
    info = {"units": 16, "dropout": 0.4}
    model = SentimentNet(len(vocab), **info)
    optimizer = chainer.optimizers.Adam(alpha=0.02)
    optimizer.setup(model)
    with chainer.using_config("train", True):
        for _ in range(200):
            loss = F.softmax_cross_entropy(model(ids), labels)
            model.cleargrads()
            loss.backward()
            optimizer.update()
    with chainer.using_config("train", False):
        accuracy = float((model(ids).array.argmax(axis=1) == labels).mean())
    print(f"trained: loss {float(loss.array):.3f}, training accuracy {accuracy:.2f}")
    chainer.serializers.save_npz(os.path.join(model_dir, "model.npz"), model)
    np.save(os.path.join(model_dir, "vocab.npy"), np.array(vocab), allow_pickle=False)
    with open(os.path.join(model_dir, "model_info.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "model"))
