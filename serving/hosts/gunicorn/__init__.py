"""``serve`` on gunicorn: the application (master, workers forked from the assembly,
:mod:`~serving.hosts.gunicorn.application`), the worker's event loop and accept policy
(:mod:`~serving.hosts.gunicorn.worker`) over llhttp with our limits
(:mod:`~serving.hosts.gunicorn.http1`)."""

__all__: list[str] = []
