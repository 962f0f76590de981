"""The WSGI app: it mounts the protocols' adapters (:data:`serving.protocols.PROTOCOLS`) over
the invocation service and keeps each request's life — its id, access line, metrics and
error body (:mod:`~serving.http.app`); the WSGI bridge every host calls it through
(:mod:`~serving.http.bridge`); the OpenAPI description of every route."""

__all__: list[str] = []
