"""The baseline: the twenty-line Flask app a user could write instead of using a server.

gunicorn -k gthread -w 2 --threads 4 'flask_app:app', with MODEL_PATH pointing at the
TorchScript model. JSON rows in, JSON rows out; no content negotiation, no limits.
"""

import os

import flask
import torch

torch.set_num_threads(1)  # two workers on a two-core machine
model = torch.jit.load(os.environ["MODEL_PATH"]).eval()
app = flask.Flask(__name__)


@app.get("/ping")
def ping():
    return ""


@app.post("/invocations")
def invocations():
    rows = flask.request.get_json(force=True)
    with torch.inference_mode():
        out = model(torch.tensor(rows, dtype=torch.float32))
    return flask.jsonify(out.tolist())
