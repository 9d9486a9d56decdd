"""hypersparse.nn."""
from .sort import SortLayer  # noqa: F401
