"""rap_jax/data"""
