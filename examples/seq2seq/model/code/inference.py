"""Hosting functions of the English → German translator (MXNet Gluon, attention).

Two request forms, as the notebook's Sockeye-based endpoint takes them:

- application/json:
    {"instances": [{"data": "i am tired", "configuration": {"attention_matrix": "true"}}]}
  → {"predictions": [{"target": "ich bin müde", "matrix": [[...], ...]}]}
  (the matrix only when asked: a row per target word, a column per source word);
- application/x-recordio-protobuf: records with features["source"] int32 token ids
  (vocab.src.json; <unk> 1) → records with features["target"] int32 ids
  (vocab.trg.json), one per request record, in request order.

The server decodes both bodies (JSON → dict, records → Record messages);
predict_fn and output_fn answer in the request's form, when Accept allows it
(no Accept does, as in the notebook's record call).
"""

import json
import os
import threading

import mxnet as mx
from attention import UNK, Translator

from handlers.content import default_registry
from handlers.content.recordio import Record
from serving import ClientError
from serving.contract.negotiation import acceptable_types

MAX_WORDS = 100


def model_fn(model_dir, context):
    with open(os.path.join(model_dir, "vocab.src.json"), encoding="utf-8") as f:
        source = json.load(f)
    with open(os.path.join(model_dir, "vocab.trg.json"), encoding="utf-8") as f:
        target = json.load(f)
    ctx = mx.gpu(int(context.device.partition(":")[2] or 0)) \
        if context.device.startswith("cuda") else mx.cpu()
    net = Translator(len(source), len(target))
    net.load_parameters(os.path.join(model_dir, "model.params"), ctx=ctx)
    return {"net": net, "ctx": ctx, "source": source,
            "target_words": {i: w for w, i in target.items()},
            # MXNet is not safe to call from two threads at once.
            "lock": threading.Lock()}


def _translate(model, ids):
    if not ids:
        raise ClientError("a sentence without any word cannot be translated")
    if len(ids) > MAX_WORDS:
        raise ClientError(f"at most {MAX_WORDS} words a sentence")
    with model["lock"]:
        return model["net"].translate(ids, model["ctx"])


def _from_json(request, model):
    instances = request.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ClientError('expected {"instances": [{"data": "a sentence"}, ...]}')
    predictions = []
    for number, instance in enumerate(instances):
        text = instance.get("data") if isinstance(instance, dict) else None
        if not isinstance(text, str):
            raise ClientError(f'instance {number} needs "data": a sentence')
        ids = [model["source"].get(word, UNK) for word in text.split()]
        target_ids, attention = _translate(model, ids)
        prediction = {"target": " ".join(model["target_words"].get(i, "<unk>")
                                         for i in target_ids)}
        configuration = instance.get("configuration") or {}
        if str(configuration.get("attention_matrix", "false")).lower() == "true":
            prediction["matrix"] = attention
        predictions.append(prediction)
    return {"predictions": predictions}


def _from_records(records, model):
    answers = []
    for number, record in enumerate(records):
        if "source" not in record.features:
            raise ClientError(f'record {number} has no features["source"]')
        ids = list(record.features["source"].int32_tensor.values)
        target_ids, _ = _translate(model, ids)
        answer = Record()
        answer.features["target"].int32_tensor.values.extend(target_ids)
        answers.append(answer)
    return answers


def predict_fn(data, model):
    if isinstance(data, dict):
        return _from_json(data, model)
    if isinstance(data, list) and data and all(isinstance(r, Record) for r in data):
        return _from_records(data, model)
    raise ClientError("send JSON instances or recordio-protobuf records with "
                      'features["source"]', status_code=422)


def output_fn(prediction, accept, context):
    """JSON answers JSON requests, records answer records, whatever the default Accept
    says: the notebook's record call sends no Accept and reads records back, as
    SageMaker's built-in seq2seq answers. An Accept that excludes the request's form
    is the client's mistake: 406."""
    form = "application/json" if isinstance(prediction, dict) else \
        "application/x-recordio-protobuf"
    if not acceptable_types(context.headers.get("Accept"), [form], form):
        raise ClientError(f"{'JSON' if isinstance(prediction, dict) else 'record'} requests "
                          f"are answered in {form}", status_code=406)
    if isinstance(prediction, dict):
        return json.dumps(prediction, ensure_ascii=False), form
    return default_registry().get(form).encode(prediction), form
