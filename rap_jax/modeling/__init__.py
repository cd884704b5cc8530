"""rap_jax/modeling"""
