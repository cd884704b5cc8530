"""Flax modules of RAP / Panoptic FPN. Names follow the original's state_dict (SPEC §2.12).

Variables: {'params': trainable weights, 'buffers': FrozenBatchNorm statistics}. A state_dict
key `a.b.c.weight` lives at `a/b/c/kernel` (conv, linear), `a/b/c/scale` (GroupNorm) or
`buffers/a/b/c/weight` (FrozenBN); `convert/` holds the table.
"""
