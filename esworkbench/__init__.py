"""esworkbench."""
