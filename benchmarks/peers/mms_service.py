"""The SageMaker inference toolkit 1.10.1 on Multi Model Server 1.1.11, as its README says
to use it: a handler service with a default inference handler, started by
``model_server.start_model_server``. Run: ``python mms_service.py`` with
SAGEMAKER_BASE_DIR, SAGEMAKER_BIND_TO_PORT and SAGEMAKER_MODEL_SERVER_WORKERS set.
"""

import os

import torch
from sagemaker_inference import decoder, default_inference_handler, encoder, model_server
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.transformer import Transformer


class MLPInferenceHandler(default_inference_handler.DefaultInferenceHandler):
    def default_model_fn(self, model_dir, context=None):
        torch.set_num_threads(1)
        return torch.jit.load(os.path.join(model_dir, "model.pt")).eval()

    def default_input_fn(self, input_data, content_type, context=None):
        return torch.tensor(decoder.decode(input_data, content_type), dtype=torch.float32)

    def default_predict_fn(self, data, model, context=None):
        with torch.inference_mode():
            return model(data)

    def default_output_fn(self, prediction, accept, context=None):
        return encoder.encode(prediction.numpy(), accept)


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=Transformer(default_inference_handler=MLPInferenceHandler()))


_service = HandlerService()
_initialized = False


def handle(data, context):
    global _initialized
    if not _initialized:
        _service.initialize(context)
        _initialized = True
    if data is None:
        return None
    return _service.handle(data, context)


if __name__ == "__main__":
    # MMS imports the handler by module name: this file's directory is on PYTHONPATH.
    model_server.start_model_server(handler_service="mms_service")
