"""The hosting functions a user's module may define, and how each is called: with its
arguments, and the trailing ``context`` when its signature takes one. Checked once, when
the module is loaded, so that a wrong signature is a start-up error, not a 500."""

from __future__ import annotations

import inspect
import typing as t

from serving.contract.context import Context
from serving.errors import StartupError

__all__ = ["HOSTING_FUNCTIONS", "UserFunction"]

#: Each hosting function and the arguments it is called with, before ``context``.
HOSTING_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "model_fn": ("model_dir",),
    "input_fn": ("input_data", "content_type"),
    "predict_fn": ("data", "model"),
    "output_fn": ("prediction", "accept"),
    "transform_fn": ("model", "data", "content_type", "accept"),
    # Bidirectional streaming: the stream's messages in (str from text frames, bytes from
    # binary ones), what to send back out, as an iterator.
    "stream_fn": ("messages", "model"),
    # Stateful sessions: called when one opens and before it closes (its state and
    # directory still there), on a prediction thread under the request deadline.
    "open_session_fn": ("session", "model"),
    "close_session_fn": ("session", "model"),
}


class UserFunction:
    """A hosting function, and whether it takes the trailing ``context``."""

    def __init__(self, name: str, fn: t.Callable[..., t.Any], source: str) -> None:
        self.name, self.fn = name, fn
        expected = HOSTING_FUNCTIONS[name]
        shapes = f"({', '.join(expected)}) or ({', '.join(expected)}, context)"
        if not callable(fn):
            raise StartupError(f"{source}: {name} is a {type(fn).__name__}, not a function")
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # builtins without a signature: trust the plain form
            self.takes_context = False
            return
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
        required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        self.takes_context = len(positional) > len(expected)
        fits = (
            not required_kw
            and len(required) <= len(expected) + self.takes_context
            and (len(positional) >= len(expected) or varargs)
            and len(positional) <= len(expected) + 1
        )
        if not fits:
            raise StartupError(
                f"{source}: {name}{inspect.signature(fn)} must take {shapes}"
            )

    def __call__(self, *args: t.Any, context: Context) -> t.Any:
        if self.takes_context:
            return self.fn(*args, context)
        return self.fn(*args)
