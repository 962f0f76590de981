"""The HTTP face: the Flask app (routes only, :mod:`~serving.http.app`), content
negotiation that decides the decoder and the encoders once
(:mod:`~serving.contract.negotiation`), the WSGI bridge every host calls the app through
(:mod:`~serving.http.bridge`), event-stream framing and the OpenAPI description."""

__all__: list[str] = []
