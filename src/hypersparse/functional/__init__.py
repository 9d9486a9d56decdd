"""hypersparse.functional."""
from .kwinners import boost, k_winners, k_winners2d, update_duty_cycles  # noqa: E402,F401
