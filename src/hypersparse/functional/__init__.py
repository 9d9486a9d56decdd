"""hypersparse.functional."""
from .contract import *  # noqa: F401, F403
from .hyper import *  # noqa: F401, F403
from .neighbours import *  # noqa: F401, F403
