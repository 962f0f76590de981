"""What each worker (or replica) runs beside the app, started after fork: the executor
that holds predictions to their deadline (:mod:`~serving.runtime.executor`), dynamic
batching, metrics and logs."""

__all__: list[str] = []
