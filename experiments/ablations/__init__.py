"""Ablations as sweep files for `python -m experiments.sweep` (see experiments/sweep.py)."""
