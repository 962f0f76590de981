"""Moved to :mod:`serving.contract.negotiation` (negotiation holds no HTTP). This name stays
for user scripts written against 0.1 that import ``acceptable_types`` from here."""

from serving.contract.negotiation import *  # noqa: F401,F403
from serving.contract.negotiation import __all__  # noqa: F401
