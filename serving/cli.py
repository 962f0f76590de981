"""``serve``: read the settings, prepare the user's code and model, start gunicorn."""

from __future__ import annotations

import logging
import sys
import typing as t

from serving.config import Config, ConfigError
from serving.errors import StartupError

__all__ = ["main"]

log = logging.getLogger("serving")

# gunicorn's own layout, so that its lines and ours read as one log.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def _fail(message: str, code: int) -> t.NoReturn:
    print(f"serve: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: t.Sequence[str] | None = None) -> None:
    try:
        config = Config.load(argv)
    except ConfigError as exc:
        _fail(str(exc), 2)
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT,
                        stream=sys.stderr)

    # Imported here so that `serve --help` and setting errors stay fast.
    from handlers.content import PluginError, default_registry
    from serving.pipeline import Context, Pipeline
    from serving.server import ServingApplication
    from serving.user_code import import_user_module, install_requirements, locate_user_script

    try:
        registry = default_registry()  # built-in handlers and installed plugins, once
        script = locate_user_script(config)
        module = None
        if script is not None:
            if config.install_requirements:
                install_requirements(script)
            module = import_user_module(script)
        else:
            log.info("no user script found; serving with the default handlers")
        pipeline = Pipeline.from_module(module, registry, default_accept=config.default_accept)
        if config.preload:
            pipeline.load_model(Context(model_dir=config.model_dir))
    except (StartupError, PluginError) as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # model_fn failed: the traceback is the user's best clue
        log.exception("loading the model failed")
        _fail(f"loading the model failed: {type(exc).__name__}: {exc}", 1)

    ServingApplication(config, pipeline).run()
