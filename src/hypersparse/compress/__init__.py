"""hypersparse.compress."""
