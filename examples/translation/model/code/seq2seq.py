"""A small GRU encoder-decoder, and greedy decoding."""

import torch
from torch import nn

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class Seq2Seq(nn.Module):
    def __init__(self, source_words: int, target_words: int, size: int = 64):
        super().__init__()
        self.source_embed = nn.Embedding(source_words, size, padding_idx=PAD)
        self.target_embed = nn.Embedding(target_words, size, padding_idx=PAD)
        self.encoder = nn.GRU(size, size, batch_first=True)
        self.decoder = nn.GRU(size, size, batch_first=True)
        self.out = nn.Linear(size, target_words)

    def forward(self, source, target_in):
        _, state = self.encoder(self.source_embed(source))
        output, _ = self.decoder(self.target_embed(target_in), state)
        return self.out(output)

    @torch.inference_mode()
    def translate(self, source, max_words: int = 30):
        """Greedy decoding of one sentence (1, length) → target ids, without BOS/EOS."""
        _, state = self.encoder(self.source_embed(source))
        token = torch.full((1, 1), BOS, dtype=torch.long, device=source.device)
        words = []
        for _ in range(max_words):
            output, state = self.decoder(self.target_embed(token), state)
            token = self.out(output).argmax(-1)
            if token.item() == EOS:
                break
            words.append(token.item())
        return words
