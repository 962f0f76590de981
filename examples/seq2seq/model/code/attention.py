"""A small Gluon encoder-decoder with dot-product attention, and greedy decoding."""

import mxnet as mx
from mxnet import gluon, nd

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # create_vocab_proto.py's ids


class Translator(gluon.Block):
    def __init__(self, source_words, target_words, size=48, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        with self.name_scope():
            self.source_embed = gluon.nn.Embedding(source_words, size)
            self.target_embed = gluon.nn.Embedding(target_words, size)
            self.encoder = gluon.rnn.GRU(size, layout="NTC")
            self.cell = gluon.rnn.GRUCell(size)
            self.combine = gluon.nn.Dense(size, activation="tanh", flatten=False)
            self.out = gluon.nn.Dense(target_words, flatten=False)

    def encode(self, source):
        """(batch, length) ids → (batch, length, size) states."""
        return self.encoder(self.source_embed(source))

    def step(self, token, state, encoded, mask):
        """One decoder step: logits (batch, words), new state, attention (batch, length)."""
        output, state = self.cell(self.target_embed(token), state)
        scores = nd.batch_dot(encoded, output.expand_dims(2)).squeeze(axis=2)
        scores = nd.where(mask, scores, nd.ones_like(scores) * -1e9)
        attention = nd.softmax(scores, axis=1)
        context = nd.batch_dot(attention.expand_dims(1), encoded).squeeze(axis=1)
        hidden = self.combine(nd.concat(output, context, dim=1))
        return self.out(hidden), state, attention

    def translate(self, source_ids, ctx=mx.cpu(), max_words=30):
        """Greedy decoding of one sentence → (target ids, attention rows)."""
        source = nd.array([source_ids], ctx=ctx)
        encoded = self.encode(source)
        mask = nd.ones_like(source)
        state = [encoded[:, -1, :]]
        token = nd.array([BOS], ctx=ctx)
        ids, rows = [], []
        for _ in range(max_words):
            logits, state, attention = self.step(token, state, encoded, mask)
            best = int(logits.argmax(axis=1).asscalar())
            if best == EOS:
                break
            ids.append(best)
            rows.append(attention[0].asnumpy().tolist())
            token = nd.array([best], ctx=ctx)
        return ids, rows
