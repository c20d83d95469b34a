"""Benchmarks: `python -m bench.<name>` runs one, `python -m bench` runs them all.
Each prints ratios measured side by side in one run (never timed tests)."""
