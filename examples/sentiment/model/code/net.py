"""A small sentiment classifier: mean of word embeddings, then two linear layers."""

import chainer
import chainer.functions as F
import chainer.links as L


class SentimentNet(chainer.Chain):
    def __init__(self, vocab_size: int, units: int = 16, dropout: float = 0.4):
        super().__init__()
        self.dropout = dropout
        with self.init_scope():
            self.embed = L.EmbedID(vocab_size, units, ignore_label=-1)
            self.hidden = L.Linear(units, units)
            self.out = L.Linear(units, 2)

    def __call__(self, tokens):
        """tokens: (batch, length) int32 ids, -1 for padding → (batch, 2) logits."""
        mask = (tokens != -1)[..., None].astype("float32")
        counts = self.xp.maximum(mask.sum(axis=1), 1.0)
        mean = F.sum(self.embed(tokens) * mask, axis=1) / counts
        # Dropout is on only in training: chainer.config.train decides.
        return self.out(F.dropout(F.relu(self.hidden(mean)), self.dropout))
