"""``serve`` on gunicorn: the application (master, workers forked from the assembly,
:mod:`~serving.hosts.gunicorn.application`) and the worker
(:mod:`~serving.hosts.gunicorn.worker`: its event loop, threads and stopping), built from
parts that need no socket: each connection's state machine and deadlines
(:mod:`~serving.hosts.gunicorn.connection`) over llhttp with our limits
(:mod:`~serving.hosts.gunicorn.http1`), when to listen (:mod:`~serving.hosts.gunicorn.accept`),
how answers are framed and written (:mod:`~serving.hosts.gunicorn.responses`), WebSocket
frames (:mod:`~serving.hosts.gunicorn.websocket`), and gunicorn's own log lines in our layout
(:mod:`~serving.hosts.gunicorn.logger`)."""

__all__: list[str] = []
