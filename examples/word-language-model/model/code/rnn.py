"""The word-level LSTM language model (the notebook's RNNModel, small)."""

import torch
from torch import nn


class RNNModel(nn.Module):
    """Embedding → LSTM → decoder, with tied input and output embeddings."""

    def __init__(self, vocab_size: int, size: int = 32, layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, size)
        self.rnn = nn.LSTM(size, size, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(size, vocab_size)
        self.decoder.weight = self.encoder.weight  # tied, as the notebook trains it
        self.layers, self.size = layers, size

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, batch: int, device="cpu"):
        zeros = torch.zeros(self.layers, batch, self.size, device=device)
        return zeros, zeros.clone()
