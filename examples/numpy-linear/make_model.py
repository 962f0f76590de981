"""Write the example's model: a 3 → 2 linear map, as NumPy arrays.

Run: python examples/numpy-linear/make_model.py [MODEL_DIR]
"""

import os
import sys

import numpy as np

model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "model")
rng = np.random.default_rng(0)
np.savez(
    os.path.join(model_dir, "linear.npz"),
    weight=rng.normal(size=(3, 2)).round(3),
    bias=np.array([0.5, -0.5]),
)
print(f"wrote {model_dir}/linear.npz")
