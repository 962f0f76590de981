"""The SageMaker hosting contract: the stages a request goes through (decode → predict →
encode, from the user's ``model_fn`` … ``transform_fn`` or the handlers), the
:class:`~serving.contract.pipeline.Context` they may take, streamed answers, and the models
a server holds by name (:mod:`~serving.contract.models`). Nothing here speaks HTTP."""

__all__: list[str] = []
