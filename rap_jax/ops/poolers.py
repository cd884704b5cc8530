"""Multi-level ROI pooling over FPN levels (SPEC §2.5, `modeling/poolers.py`).

Level assignment (FPN eq. 1, float32): s = sqrt(area with +1), lvl = floor(4 + log2(s/224 + 1e-6)),
clamped to [k_min, k_max]; each ROI is pooled from its level only. P6 is never pooled.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from rap_jax.ops import boxes as box_ops
from rap_jax.ops.roi_align import roi_align_flat

CANONICAL_SCALE = 224.0
CANONICAL_LEVEL = 4.0
EPS = 1e-6


def map_levels(boxes: jnp.ndarray, scales: Sequence[float]) -> jnp.ndarray:
  """Level index (0 = finest of `scales`) of each box [K, 4] -> [K] int32."""
  k_min = int(round(-math.log2(scales[0])))
  k_max = int(round(-math.log2(scales[-1])))
  s = jnp.sqrt(box_ops.box_area(boxes))
  lvl = jnp.floor(jnp.float32(CANONICAL_LEVEL) +
                  jnp.log2(s / jnp.float32(CANONICAL_SCALE) + jnp.float32(EPS)))
  lvl = jnp.clip(lvl, k_min, k_max)
  return lvl.astype(jnp.int32) - k_min


def pool_rois(features: Sequence[jnp.ndarray], boxes: jnp.ndarray, scales: Sequence[float],
              output_size: int, sampling_ratio: int, feature_hws=None) -> jnp.ndarray:
  """Pool K boxes of one image from its FPN levels (one gather over all levels).

  Args:
    features: per level [Hc_l, Wc_l, C] canvases (at least len(scales) levels; extra ignored).
    boxes: [K, 4] xyxy in input pixels.
    scales: per-level spatial scales (1/4 ... 1/32).
    output_size: P.
    sampling_ratio: samples per bin per axis.
    feature_hws: per level valid (H, W) (ints or traced); default the canvases.
  Returns:
    [K, P, P, C].
  """
  n = len(scales)
  feats = list(features[:n])
  levels = map_levels(boxes, scales)  # [K]
  flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in feats], axis=0)
  offsets = [0]
  for f in feats[:-1]:
    offsets.append(offsets[-1] + f.shape[0] * f.shape[1])
  if feature_hws is None:
    feature_hws = [f.shape[:2] for f in feats]
  table = lambda vals, dtype: jnp.stack([jnp.asarray(v, dtype) for v in vals])[levels]
  return roi_align_flat(
      flat, boxes,
      scale=table(scales, jnp.float32),
      height=table([hw[0] for hw in feature_hws], jnp.int32),
      width=table([hw[1] for hw in feature_hws], jnp.int32),
      row_stride=table([f.shape[1] for f in feats], jnp.int32),
      offset=table(offsets, jnp.int32),
      output_size=output_size, sampling_ratio=sampling_ratio)
