"""hypersparse.nn."""
from .glimpse import *  # noqa: F401, F403
from .kwinners import KWinners, KWinners2d  # noqa: E402,F401
from .sparse_weights import SparseWeights, SparseWeights2d, random_fan_in_mask  # noqa: E402,F401
from .hyper import *  # noqa: F401, F403
from .dilation import *  # noqa: F401, F403
from .sortnet import *  # noqa: F401, F403
from .sort import SortLayer  # noqa: F401
