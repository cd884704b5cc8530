"""RAP relation head (SPEC §2.9): one scalar per instance; smaller = nearer to the camera.

Input [K, 14, 14, C+1] = raw mask-ROI features ++ 2x2-max-pooled mask probability.
`relation_fcn1..3` 3x3/1 + ReLU, `relation_fcn4` 3x3/2 + ReLU (14 -> 7), flatten, `relation_fc1`
+ ReLU, `predictor.relation_val` (1 output, no activation).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from rap_jax.modeling.layers import conv, flatten_hwc, max_pool_2x2


def relation_input(roi_features, mask_probs):
  """[..., 14, 14, C] features ++ max_pool2d(mask [..., 28, 28], 2, 2) -> [..., 14, 14, C+1]."""
  lead = mask_probs.shape[:-2]
  m = mask_probs.reshape((-1,) + mask_probs.shape[-2:] + (1,))
  m = max_pool_2x2(m).reshape(lead + (mask_probs.shape[-2] // 2, mask_probs.shape[-1] // 2, 1))
  return jnp.concatenate([roi_features, m.astype(roi_features.dtype)], axis=-1)


class RelationFeatureExtractor(nn.Module):
  conv_dim: int
  mlp_head_dim: int

  @nn.compact
  def __call__(self, x):
    for i in range(3):
      x = nn.relu(conv(self.conv_dim, 3, name=f"relation_fcn{i + 1}")(x))
    x = nn.relu(conv(self.conv_dim, 3, 2, name="relation_fcn4")(x))
    return nn.relu(nn.Dense(self.mlp_head_dim, name="relation_fc1")(flatten_hwc(x)))


class RelationPredictor(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, name="relation_val")(x)[:, 0]


class RelationHead(nn.Module):
  """Fields used from `config.model.roi_heads.relation`: conv_dim, mlp_head_dim."""
  conv_dim: int = 256
  mlp_head_dim: int = 1024

  def setup(self):
    self.feature_extractor = RelationFeatureExtractor(self.conv_dim, self.mlp_head_dim)
    self.predictor = RelationPredictor()

  def __call__(self, x):
    """x: [K, 14, 14, C+1] -> [K] float32 relation values."""
    return self.predictor(self.feature_extractor(x)).astype(jnp.float32)
