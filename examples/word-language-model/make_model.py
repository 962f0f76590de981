"""Train the example's language model for a few seconds and write its model directory.

Run: python examples/word-language-model/make_model.py [MODEL_DIR]
Writes model.pth (the state_dict), model_info.json and vocab.json next to code/.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "model", "code"))
from rnn import RNNModel  # noqa: E402


def main(model_dir: str) -> None:
    torch.manual_seed(0)
    with open(os.path.join(HERE, "data", "corpus.txt")) as f:
        words = f.read().split()
    vocab = sorted(set(words))
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index[w] for w in words])
    info = {"size": 32, "layers": 1, "dropout": 0.2}
    model = RNNModel(len(vocab), **info)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    bptt = 20
    model.train()
    for epoch in range(30):
        hidden = model.init_hidden(1)
        for start in range(0, len(ids) - 1, bptt):
            inputs = ids[start:start + bptt].view(-1, 1)
            targets = ids[start + 1:start + 1 + bptt]
            inputs = inputs[: len(targets)]
            hidden = tuple(h.detach() for h in hidden)
            logits, hidden = model(inputs, hidden)
            loss = loss_fn(logits.view(-1, len(vocab)), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    print(f"trained: last loss {loss.item():.2f} on {len(words)} words, vocabulary {len(vocab)}")
    torch.save(model.state_dict(), os.path.join(model_dir, "model.pth"))
    with open(os.path.join(model_dir, "model_info.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(model_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "model"))
