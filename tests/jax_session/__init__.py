"""Helpers of the JAX test session (tests/test_jax_backend.py); the TensorFlow reference
(`tf_reference`, `cases`, `tf_comparison`, `without_tensorflow`) also serves the torch
session (tests/test_torch_backend.py)."""
