"""Reproducible benchmarks: run ``python -m bench.<name> --help``."""
