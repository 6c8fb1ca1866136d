"""Benchmarks of siamese_k3 against native training loops (see benchmarks/README.md)."""
