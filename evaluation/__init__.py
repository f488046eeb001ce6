"""Toy data set and its exact evaluator (numpy + PIL; no host, no torch)."""
