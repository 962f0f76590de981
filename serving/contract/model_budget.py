"""The multi-model memory budget (``SERVING_MODELS_MEMORY_MB``): which models make room.

Each model counts the bytes of its files; every worker holds every model it answers for.
A load that does not fit unloads the least recently used models first, until it fits; one
that would not fit alone is refused (507) before anything is unloaded.
"""

from __future__ import annotations

import typing as t

__all__ = ["fits_alone", "to_unload"]


def fits_alone(size: int, budget: int) -> bool:
    return size <= budget


def to_unload(sizes: t.Mapping[str, int], last_used: t.Callable[[str], float], size: int,
              budget: int) -> list[str]:
    """The models to unload, least recently used first, so that ``size`` more bytes fit
    ``budget`` beside the models in ``sizes`` (name → bytes); empty when it fits already.
    When even unloading them all is not enough, all of them (the caller checked
    :func:`fits_alone` first)."""
    total = sum(sizes.values())
    chosen: list[str] = []
    for name in sorted(sizes, key=last_used):
        if total + size <= budget:
            break
        chosen.append(name)
        total -= sizes[name]
    return chosen
