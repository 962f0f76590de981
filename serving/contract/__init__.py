"""What a model is asked and answers, whatever the protocol: the invocation service
(:mod:`~serving.contract.invocation`: readiness, which model, negotiation
(:mod:`~serving.contract.negotiation`), limits (:mod:`~serving.contract.limits`), sessions
(:mod:`~serving.contract.sessions`), the deadline); one model's pipeline of stages (decode → predict →
encode, from the user's ``model_fn`` … ``transform_fn`` or the handlers:
:mod:`~serving.contract.pipeline`, :mod:`~serving.contract.hosting_functions`), the
:class:`~serving.contract.context.Context` they may take, streamed answers
(:mod:`~serving.contract.streams`), and the models a server holds by name
(:mod:`~serving.contract.models`, with the multi-model records every worker shares,
:mod:`~serving.contract.model_store`, and the memory budget,
:mod:`~serving.contract.model_budget`). Nothing here speaks HTTP."""

__all__: list[str] = []
