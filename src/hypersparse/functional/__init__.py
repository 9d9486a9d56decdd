"""hypersparse.functional."""
from .kwinners import boost, k_winners, k_winners2d, update_duty_cycles  # noqa: E402,F401
from .chebyshev import *  # noqa: F401, F403
from .contract import *  # noqa: F401, F403
from .glimpse import *  # noqa: F401, F403
from .hyper import *  # noqa: F401, F403
from .neighbours import *  # noqa: F401, F403
from .sort import (  # noqa: F401
    QuicksortResult,
    SortLevel,
    apply_sort_level,
    neuralsort,
    quicksort,
    quicksort_tuples,
)
