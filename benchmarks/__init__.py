"""Developer benchmarks: speed, memory and scale measurements, apart from the library and the precompute steps."""
