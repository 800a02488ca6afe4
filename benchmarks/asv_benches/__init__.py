"""The asv suite: a few kernels timed commit against commit (see benchmarks/README.md)."""
