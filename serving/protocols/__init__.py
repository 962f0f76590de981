"""Wire contracts beside SageMaker's, on the same pipeline: TorchServe's model archives,
handlers and inference API (:mod:`~serving.protocols.torchserve`)."""

__all__: list[str] = []
