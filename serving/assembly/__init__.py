"""From the settings to the parts of a server, with no HTTP: the device plan
(:mod:`~serving.assembly.devices`), the user's code, one namespace per model
(:mod:`~serving.assembly.user_code`), TorchServe model archives and their handlers run as a
pipeline's stages (:mod:`~serving.assembly.mar`, :mod:`~serving.assembly.torchserve_handler`),
and the models and their pipelines, ready for a host (:mod:`~serving.assembly.build`)."""

__all__: list[str] = []
