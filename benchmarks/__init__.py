"""Benchmarks of alignseg_keras: `python -m benchmarks.run --help` (or `make bench`)."""
