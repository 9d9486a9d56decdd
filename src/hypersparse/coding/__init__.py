"""hypersparse.coding."""
