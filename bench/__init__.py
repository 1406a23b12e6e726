"""Benchmarks and load generators (`make bench`); bench/load.py is imported by tests and the soak run."""
