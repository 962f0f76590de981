"""Wire contracts beside SageMaker's, as adapters over the same models: KServe's v1 and v2
(:mod:`~serving.protocols.kserve`), TorchServe's management API and its keys
(:mod:`~serving.protocols.torchserve_management`, :mod:`~serving.protocols.torchserve_tokens`).
A TorchServe archive's handler is how a model is assembled, not a wire contract: it lives in
:mod:`serving.assembly.torchserve_handler`."""

__all__: list[str] = []
