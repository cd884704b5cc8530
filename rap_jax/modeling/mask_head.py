"""Mask head (SPEC §2.7): ROIAlign 14x14, `mask_fcn1..4` (3x3 + ReLU), `conv5_mask`
(ConvTranspose 2x2/2 + ReLU) and `mask_fcn_logits` (1x1, num_classes). At test time the mask of
a detection is the sigmoid of its label's channel (28x28). The raw pooled ROI features are
returned too: the relation heads read them (SPEC §11.6).

`ROI_MASK_HEAD.USE_GN` (`use_gn`): each `mask_fcnK` is the original's `make_conv3x3(use_gn=True)`,
`mask_fcnK.0` conv (no bias, kaiming_normal fan_out) + `mask_fcnK.1` GroupNorm of
`MODEL.GROUP_NORM` (per ROI), then ReLU.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_jax.modeling.layers import (KAIMING_NORMAL_FAN_OUT, ConvGroupNorm, ConvTranspose2x2,
                                     GroupNormSpec, conv)
from rap_jax.ops.poolers import pool_rois


class MaskFeatureExtractor(nn.Module):
  """`MaskRCNNFPNFeatureExtractor` convs on pooled [K, 14, 14, C]."""
  conv_layers: Sequence[int]
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.conv_layers):
      name = f"mask_fcn{i + 1}"
      layer = (ConvGroupNorm(c, 3, self.group_norm, KAIMING_NORMAL_FAN_OUT, name=name)
               if self.use_gn else conv(c, 3, name=name))
      x = nn.relu(layer(x))
    return x


class MaskPredictor(nn.Module):
  """`MaskRCNNC4Predictor`: conv5_mask (deconv) + ReLU, mask_fcn_logits 1x1."""
  dim: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(ConvTranspose2x2(self.dim, name="conv5_mask")(x))
    return conv(self.num_classes, 1, name="mask_fcn_logits")(x)


class MaskHead(nn.Module):
  """Fields = `config.model.roi_heads.mask`."""
  in_channels: int = 256
  pooler_resolution: int = 14
  pooler_scales: Sequence[float] = (0.25, 0.125, 0.0625, 0.03125)
  pooler_sampling_ratio: int = 2
  conv_layers: Sequence[int] = (256, 256, 256, 256)
  resolution: int = 28
  num_classes: int = 81
  use_gn: bool = False                         # ROI_MASK_HEAD.USE_GN
  group_norm: GroupNormSpec = GroupNormSpec()  # MODEL.GROUP_NORM

  def setup(self):
    self.feature_extractor = MaskFeatureExtractor(tuple(self.conv_layers), self.use_gn,
                                                  self.group_norm)
    self.predictor = MaskPredictor(self.conv_layers[-1], self.num_classes)

  def pool(self, features, boxes, feature_hws):
    """features per level [N, h, w, C]; boxes [N, K, 4] -> [N, K, 14, 14, C] raw ROI features."""
    n = len(self.pooler_scales)
    return jax.vmap(
        lambda f, b, hw: pool_rois(f, b, self.pooler_scales, self.pooler_resolution,
                                   self.pooler_sampling_ratio, hw),
    )(list(features[:n]), boxes, list(feature_hws[:n]))

  def __call__(self, roi_features, labels):
    """roi_features [N, K, 14, 14, C], labels [N, K] int32 -> logits [N, K, 28, 28] at the label."""
    n, k = roi_features.shape[:2]
    x = roi_features.reshape((n * k,) + roi_features.shape[2:])
    logits = self.predictor(self.feature_extractor(x))  # [N*K, 28, 28, classes]
    lab = labels.reshape(-1)
    sel = jnp.take_along_axis(logits, lab[:, None, None, None], axis=-1)[..., 0]
    return sel.reshape(n, k, self.resolution, self.resolution)
