"""Tasks register themselves with the engine on import."""
from . import image  # noqa: F401
from . import image_cluttered  # noqa: F401
from . import motion  # noqa: F401
from . import pointcloud  # noqa: F401
from . import retrieval  # noqa: F401
from . import sqa3d  # noqa: F401
from . import video  # noqa: F401
from . import vqa  # noqa: F401
