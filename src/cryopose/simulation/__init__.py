"""Simulated data sets with known truth: the demo molecule and the particle simulator."""
