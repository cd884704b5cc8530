"""Plain-numpy loop references of the hard ops, written from SPEC.md step by step.

For tests only: nothing under `rap_jax/ops` or `rap_jax/modeling` imports this package
(tests/test_imports.py checks it). Readability over speed.
"""
