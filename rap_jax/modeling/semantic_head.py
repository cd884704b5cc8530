"""Semantic FPN head (SPEC §2.8, `modeling/semantic_head/semantic_head.py`).

Branches `semantic_seq0..4` read P6..P2; each stage is conv 3x3 (bias) -> GroupNorm(32) -> ReLU
[-> Upsample x2 bilinear align_corners=True]; branch outputs are resized to the P2 branch size
(align_corners=True), summed y0+y1+y2+y3+y4, and `semantic_final.0` (1x1) gives the quarter-
resolution logits (55 channels). `semantic_final.1`, the x4 upsampling, is applied by the
post-processing (or the loss), on the same valid sizes.

Valid sizes are tracked per image: the P6 branch is valid in 2^k * ceil(Hp/64) after k
upsamplings, which differs from Hp/4 when Hp/32 is odd (then the alignment resize is real).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_jax.modeling.layers import MaskedGroupNorm, block_mask, conv, valid_hw
from rap_jax.ops.resize import resize_bilinear, resize_bilinear_matmul

# (input level index into (P2..P6), number of conv stages, upsample after each stage?)
_BRANCHES = ((4, 4, True), (3, 3, True), (2, 2, True), (1, 1, True), (0, 1, False))
_STRIDES = (4, 8, 16, 32, 64)


def _resize_batch(x, out_hw, in_valid, out_valid, train: bool = False):
  """Per-image align_corners=True resize: x [N, h, w, C] -> [N, *out_hw, C].

  Inference uses the gather form (`resize_bilinear`: PyTorch's values, the same on any canvas);
  training the matmul form (`resize_bilinear_matmul`: the same values up to an ulp, several
  times faster forward and backward on CPU, but its rounding depends on the canvas).
  """
  resize = resize_bilinear_matmul if train else resize_bilinear
  return jax.vmap(lambda xi, vi, vo: resize(xi, out_hw, vi, vo, align_corners=True))(
      x, in_valid, out_valid)


class SemanticBranch(nn.Module):
  """One `semantic_seq{i}` Sequential; children named by their Sequential index."""
  num_stages: int
  upsample: bool
  conv_dim: int
  num_groups: int

  @nn.compact
  def __call__(self, x, hw, train: bool = False):
    """x [N, h, w, C] valid in hw [N, 2] -> (y, valid hw of y); `train` see `_resize_batch`."""
    idx = 0
    for _ in range(self.num_stages):
      m = block_mask(hw, x.shape[1:3])
      x = jnp.where(m, x, 0.0)
      x = conv(self.conv_dim, 3, name=str(idx))(x)
      x = MaskedGroupNorm(self.num_groups, name=str(idx + 1))(x, m)
      x = nn.relu(x)
      idx += 3
      if self.upsample:
        out_hw = (2 * x.shape[1], 2 * x.shape[2])
        x = _resize_batch(x, out_hw, hw, 2 * hw, train)
        hw = 2 * hw
        idx += 1
    return x, hw


class SemanticFinal(nn.Module):
  """`semantic_final.0`: 1x1 conv to the class channels (the x4 upsample is done outside)."""
  num_outputs: int

  @nn.compact
  def __call__(self, x):
    return conv(self.num_outputs, 1, name="0")(x)


class SemanticFPN(nn.Module):
  """Fields = `config.model.semantic`."""
  in_channels: int = 256
  num_classes: int = 54
  conv_dim: int = 128
  num_groups: int = 32
  loss_weight: float = 0.5

  @nn.compact
  def __call__(self, features, padded_hw=None, train: bool = False):
    """features (P2..P6) [N, h_l, w_l, C] -> quarter logits [N, h_2, w_2, num_classes + 1] (f32).

    Valid in each image's `padded_hw / 4` block. `train`: resizes as matmuls (`_resize_batch`).
    """
    n = features[0].shape[0]
    if padded_hw is None:
      padded_hw = jnp.tile(jnp.asarray([[features[0].shape[1] * 4, features[0].shape[2] * 4]],
                                       jnp.int32), (n, 1))
    ys, hws = [], []
    for i, (level, stages, up) in enumerate(_BRANCHES):
      hw = valid_hw(padded_hw, _STRIDES[level])
      y, hw = SemanticBranch(stages, up, self.conv_dim, self.num_groups,
                             name=f"semantic_seq{i}")(features[level], hw, train)
      ys.append(y)
      hws.append(hw)
    target_shape = ys[4].shape[1:3]
    target_hw = hws[4]
    total = None
    for y, hw in zip(ys[:4], hws[:4]):
      y = _resize_batch(y, target_shape, hw, target_hw, train)
      total = y if total is None else total + y
    total = total + ys[4]
    total = jnp.where(block_mask(target_hw, target_shape), total, 0.0)
    return SemanticFinal(self.num_classes + 1, name="semantic_final")(total).astype(jnp.float32)
