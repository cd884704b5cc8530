"""rap_jax/metrics"""
