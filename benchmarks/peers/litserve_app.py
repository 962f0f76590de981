"""LitServe 0.2.19 serving the TorchScript MLP: ``python litserve_app.py PORT``.

Two workers on the CPU (workers_per_device=2), as every server here; POST /predict.
"""

import os
import sys

import litserve as ls
import torch


class MLP(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.model = torch.jit.load(os.environ["MODEL_PATH"]).eval()

    def decode_request(self, request):
        return torch.tensor(request, dtype=torch.float32)

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def encode_response(self, output):
        return output.tolist()


if __name__ == "__main__":
    server = ls.LitServer(MLP(), accelerator="cpu", workers_per_device=2)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
