"""hypersparse.nn."""
from .glimpse import *  # noqa: F401, F403
from .hyper import *  # noqa: F401, F403
