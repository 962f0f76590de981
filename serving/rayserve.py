"""The path Ray Serve config files name (``import_path: serving.rayserve:app_builder``, as in
``deploy/ray/serve-config.yaml``): the Ray host lives in :mod:`serving.hosts.ray`."""

from serving.hosts.ray import app_builder

__all__ = ["app_builder"]
