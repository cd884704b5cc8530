"""rap_jax/reference"""
