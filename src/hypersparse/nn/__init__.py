"""hypersparse.nn."""
