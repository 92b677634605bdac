"""Evaluation: task metrics on held-out data, plots, and the generic `evaluate` entry."""
