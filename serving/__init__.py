"""serving-toolkit: a model server with the SageMaker hosting contract.

User code needs three names from here: :class:`ClientError`, to answer a bad
request with a 4xx of its choice; :class:`Context`, the optional trailing
argument of every hosting function; and :func:`batched`, to mark a
``predict_fn`` that takes batches (dynamic batching).
"""

from serving.contract.context import Context
from serving.errors import ClientError
from serving.runtime.batching import batched

__all__ = ["ClientError", "Context", "batched", "__version__"]

__version__ = "0.1.0"
