"""Train the example's English → French translator on a tiny parallel corpus, in seconds.

Run: python examples/translation/make_model.py [MODEL_DIR]
Writes model.pth (the state_dict) and vocab.json next to code/.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "model", "code"))
from inference import tokenize  # noqa: E402
from seq2seq import BOS, EOS, PAD, SPECIALS, Seq2Seq  # noqa: E402


def main(model_dir: str) -> None:
    torch.manual_seed(0)
    with open(os.path.join(HERE, "data", "pairs.tsv"), encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    sources = [tokenize(en) for en, _ in pairs]
    targets = [fr.split() for _, fr in pairs]  # French kept as written: apostrophes and all
    source_vocab = SPECIALS + sorted({w for s in sources for w in s})
    target_vocab = SPECIALS + sorted({w for t in targets for w in t})
    s_index = {w: i for i, w in enumerate(source_vocab)}
    t_index = {w: i for i, w in enumerate(target_vocab)}

    def padded(rows):
        width = max(len(r) for r in rows)
        return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])

    source = padded([[s_index[w] for w in s] for s in sources])
    target_in = padded([[BOS] + [t_index[w] for w in t] for t in targets])
    target_out = padded([[t_index[w] for w in t] + [EOS] for t in targets])
    model = Seq2Seq(len(source_vocab), len(target_vocab))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD)
    for _ in range(300):
        logits = model(source, target_in)
        loss = loss_fn(logits.reshape(-1, len(target_vocab)), target_out.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    right = sum(
        [target_vocab[i] for i in model.translate(torch.tensor([[s_index[w] for w in s]]))] == t
        for s, t in zip(sources, targets))
    print(f"trained: loss {loss.item():.4f}, {right}/{len(pairs)} training sentences exact")
    torch.save(model.state_dict(), os.path.join(model_dir, "model.pth"))
    with open(os.path.join(model_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({"source": source_vocab, "target": target_vocab}, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "model"))
