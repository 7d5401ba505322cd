"""nanofly stage."""
