"""Experiments: the sweep runner, ablation sweep files and benchmarks (not installed with mmjax)."""
