"""hypersparse.functional."""
from .sort import (  # noqa: F401
    QuicksortResult,
    SortLevel,
    apply_sort_level,
    neuralsort,
    quicksort,
    quicksort_tuples,
)
