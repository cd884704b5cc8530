"""rap_jax: Relation Aware Panoptic segmentation (RAP) in JAX/Flax.

A faithful re-implementation of RAPNet/RAP (a maskrcnn-benchmark fork): Panoptic FPN with a
relation head that ranks instances by depth, and the fusions that use it. See README.md.
"""

__version__ = "0.1.0"
