"""serving-toolkit: a model server with the SageMaker hosting contract.

User code needs two names from here: :class:`ClientError`, to answer a bad
request with a 4xx of its choice, and :class:`Context`, the optional trailing
argument of every hosting function.
"""

from serving.errors import ClientError
from serving.pipeline import Context

__all__ = ["ClientError", "Context", "__version__"]

__version__ = "0.1.0"
