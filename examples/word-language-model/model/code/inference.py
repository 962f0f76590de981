"""Hosting functions of the word-level language model: all four are ours, as in the notebook.

Request:  {"seed": 111, "temperature": 2.0, "words": 100}   (application/json)
Response: the generated text, a JSON string.
With "stream": true, the text streams word by word as it is generated (text/plain,
chunked; boto3's invoke_endpoint_with_response_stream reads it part by part).
The same seed and temperature always give the same text, streamed or not.

Bidirectional streaming (stream_fn, a WebSocket at /invocations-bidirectional-stream):
each text message is a request as above; its words come back one text frame each, then
{"done": true, "words": n}. A message with "continue": true goes on from where this
stream's last answer stopped: the LSTM's state lives as long as the stream.
"""

import json
import os

import torch

from rnn import RNNModel
from serving import ClientError

MAX_WORDS = 1000


def model_fn(model_dir, context):
    with open(os.path.join(model_dir, "model_info.json")) as f:
        info = json.load(f)
    with open(os.path.join(model_dir, "vocab.json")) as f:
        vocab = json.load(f)
    model = RNNModel(len(vocab), info["size"], info["layers"], info["dropout"])
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    model.to(context.device).eval()
    return {"model": model, "vocab": vocab}


def input_fn(input_data, content_type):
    if content_type != "application/json":
        raise ClientError(f"send application/json, not {content_type}", status_code=415)
    try:
        request = json.loads(input_data)
    except ValueError as exc:
        raise ClientError(f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ClientError('expected {"seed": int, "temperature": float, "words": int}')
    try:
        seed = int(request.get("seed", 0))
        temperature = float(request.get("temperature", 1.0))
        words = int(request.get("words", 100))
        stream = request.get("stream", False)
        if not isinstance(stream, bool):
            raise ValueError("stream must be true or false")
    except (TypeError, ValueError) as exc:
        raise ClientError(f"bad parameter: {exc}") from None
    if not 0 < temperature <= 100:
        raise ClientError("temperature must be more than 0 (and at most 100)")
    if not 0 < words <= MAX_WORDS:
        raise ClientError(f"words must be 1-{MAX_WORDS}")
    return {"seed": seed, "temperature": temperature, "words": words, "stream": stream}


def predict_fn(data, model, context):
    words = generate(model["model"], model["vocab"], data, context.device)
    # A generator is streamed by the server, each word as soon as it is made.
    return words if data["stream"] else " ".join(words)


def generate(net, vocab, data, device, carry=None):
    """The words, one at a time.

    :param carry: a stream's state: where its last answer stopped (``token``, ``hidden``),
        to go on from there, and where this one stops, kept in it after each word.
    """
    # A generator of this request's own: the same seed gives the same text, whatever other
    # requests run in the same worker at the same time.
    generator = torch.Generator().manual_seed(data["seed"])
    if carry and "token" in carry:
        token, hidden = carry["token"], carry["hidden"]
    else:
        token = torch.randint(len(vocab), (1, 1), generator=generator)
        hidden = net.init_hidden(1, device)
    for _ in range(data["words"]):
        token, hidden = step(net, token, hidden, data["temperature"], generator, device)
        if carry is not None:
            carry["token"], carry["hidden"] = token, hidden
        yield vocab[token.item()]


def stream_fn(messages, model, context):
    """One WebSocket stream: requests in, words out as they are made (see the top)."""
    carry = {}
    for message in messages:
        body = message.encode("utf-8") if isinstance(message, str) else message
        data = input_fn(body, "application/json")
        if not json.loads(body).get("continue"):
            carry.clear()
        count = 0
        for word in generate(model["model"], model["vocab"], data, context.device, carry):
            count += 1
            yield word
        yield {"done": True, "words": count}


# Per step, not around the loop: a streamed generator resumes on whichever prediction
# thread is free, and inference mode is a per-thread setting.
@torch.inference_mode()
def step(net, token, hidden, temperature, generator, device):
    logits, hidden = net(token.to(device), hidden)
    weights = logits.squeeze().div(temperature).exp().cpu()
    return torch.multinomial(weights, 1, generator=generator).view(1, 1), hidden


def output_fn(prediction, accept):
    if not isinstance(prediction, str):  # streamed: "w1", " w2", " w3", ...
        return (word if i == 0 else " " + word for i, word in enumerate(prediction)), "text/plain"
    if accept not in ("application/json", "text/plain"):
        raise ClientError(f"answers are application/json or text/plain, not {accept}",
                          status_code=406)
    if accept == "text/plain":
        return prediction, "text/plain"
    return json.dumps(prediction), "application/json"
