"""hypersparse.nn."""
from .hyper import *  # noqa: F401, F403
