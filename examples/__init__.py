"""Runnable examples; each is run by ``tests/test_examples.py``."""
