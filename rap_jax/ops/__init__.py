"""rap_jax/ops"""
