"""Evaluation harness: does mining save labels? (active-learning simulation, shift AUROC, benchmarks)."""
