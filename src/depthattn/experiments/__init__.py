"""Experiments over runs: comparisons of methods over seeds, sweeps over a field, the report."""
