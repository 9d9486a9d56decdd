"""hypersparse.nn."""
from .hyper import *  # noqa: F401, F403
from .sortnet import *  # noqa: F401, F403
