"""What the server plugs in: content-type handlers and framework handlers.

Nothing here imports Flask or gunicorn; see ``handlers/content/README.md``.
"""

__all__: list[str] = []  # the subpackages are the API: handlers.content, handlers.frameworks
