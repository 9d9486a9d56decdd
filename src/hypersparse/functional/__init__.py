"""hypersparse.functional."""
