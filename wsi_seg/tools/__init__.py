"""Tools around the product: synthetic slides with exact truth, and the benchmarks."""
