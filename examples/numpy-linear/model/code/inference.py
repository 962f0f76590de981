"""A NumPy linear model: rows of 3 numbers in, rows of 2 scores out.

The server decodes JSON or NPY into an array and encodes the answer as the
client's Accept asks, so only model_fn and predict_fn are needed.
"""

import os

import numpy as np

from serving import ClientError


def model_fn(model_dir):
    with np.load(os.path.join(model_dir, "linear.npz")) as arrays:
        return {"weight": arrays["weight"], "bias": arrays["bias"]}


def predict_fn(data, model):
    try:
        data = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ClientError("expected rows of numbers, such as [[1, 2, 3]]", status_code=422)
    if data.ndim != 2 or data.shape[1] != model["weight"].shape[0]:
        raise ClientError(
            f"expected rows of {model['weight'].shape[0]} numbers, got shape {list(data.shape)}",
            status_code=422,
        )
    return data @ model["weight"] + model["bias"]
