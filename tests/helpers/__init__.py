"""Shared test helpers: reference kernels, checkpoints in the original layouts, oracles, pictures."""
