"""Benchmarks (not tests): each runs its baselines side by side in one run and prints ratios."""
