"""Train the example's English → German translator (MXNet Gluon, attention) in seconds.

Run: python examples/seq2seq/make_model.py [MODEL_DIR]
Writes model.params and the vocabularies of the notebook's preprocessing,
vocab.src.json and vocab.trg.json (string → id; <pad> 0, <unk> 1, <s> 2, </s> 3).
"""

import json
import os
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "model", "code"))
from attention import BOS, EOS, PAD, Translator  # noqa: E402

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def vocabulary(sentences):
    words = SPECIALS + sorted({w for s in sentences for w in s})
    return {w: i for i, w in enumerate(words)}


def main(model_dir: str) -> None:
    mx.random.seed(0)
    np.random.seed(0)
    with open(os.path.join(HERE, "data", "pairs.tsv"), encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    sources = [en.split() for en, _ in pairs]
    targets = [de.split() for _, de in pairs]
    src, trg = vocabulary(sources), vocabulary(targets)
    width_s = max(map(len, sources))
    width_t = max(map(len, targets)) + 1

    def pad(rows, width):
        return nd.array([r + [PAD] * (width - len(r)) for r in rows])

    source = pad([[src[w] for w in s] for s in sources], width_s)
    target_in = pad([[BOS] + [trg[w] for w in t] for t in targets], width_t)
    target_out = pad([[trg[w] for w in t] + [EOS] for t in targets], width_t)
    mask = source != PAD
    lengths = nd.array([len(s) for s in sources])
    model = Translator(len(src), len(trg))
    model.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 0.01})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(150):
        with autograd.record():
            encoded = model.encode(source)
            # the state of each sentence's last real word
            state = [nd.SequenceLast(encoded.swapaxes(0, 1), sequence_length=lengths,
                                     use_sequence_length=True)]
            loss = 0
            for t in range(width_t):
                logits, state, _ = model.step(target_in[:, t], state, encoded, mask)
                weight = (target_out[:, t] != PAD).expand_dims(1)
                loss = loss + loss_fn(logits, target_out[:, t], weight)
            loss = loss.mean()
        loss.backward()
        trainer.step(1)
    right = sum(model.translate([src[w] for w in s])[0] == [trg[w] for w in t]
                for s, t in zip(sources, targets))
    print(f"trained: loss {loss.asscalar():.4f}, {right}/{len(pairs)} training sentences exact")
    model.save_parameters(os.path.join(model_dir, "model.params"))
    for name, vocab in (("vocab.src.json", src), ("vocab.trg.json", trg)):
        with open(os.path.join(model_dir, name), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "model"))
