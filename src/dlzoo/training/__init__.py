"""Trainer construction from config, callbacks, seeding, and the generic `train` entry."""
