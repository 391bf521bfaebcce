"""Tasks register themselves with the engine on import."""
from . import image  # noqa: F401
from ..analysis import datasets  # noqa: F401,E402  (registers "image_cluttered", the analysis dataset task)
