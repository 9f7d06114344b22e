"""Benchmarks: each prints ratios measured in one process, and writes JSON under bench/results/."""
