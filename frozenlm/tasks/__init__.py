"""Tasks register themselves with the engine on import."""
from . import image  # noqa: F401
from . import image_cluttered  # noqa: F401
from . import pointcloud  # noqa: F401
from . import sqa3d  # noqa: F401
