"""Helpers of the JAX test session (tests/test_jax_backend.py)."""
