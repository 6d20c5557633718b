"""Rotations and SO(3) grids (no models, no I/O)."""
