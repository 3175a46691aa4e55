"""Target kinds: one module each, registered in :mod:`drkit.targets.registry`."""
