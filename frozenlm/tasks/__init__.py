"""Tasks register themselves with the engine on import."""
from . import image  # noqa: F401
