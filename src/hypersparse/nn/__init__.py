"""hypersparse.nn."""
from .hyper import *  # noqa: F401, F403
from .dilation import *  # noqa: F401, F403
