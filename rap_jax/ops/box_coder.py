"""Box encoding/decoding of maskrcnn-benchmark's `BoxCoder` (SPEC §2.4), "+1" convention.

Operation order and float32 arithmetic follow `modeling/box_coder.py` line by line. Under jit,
XLA contracts `a*b + c` into fused multiply-adds and turns division by a constant into a multiply
by its reciprocal, so results can differ from the original in the last bit (tests/test_ops_boxes.py
bounds it: 4 ulps of the largest term).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # 4.135166556742356

TO_REMOVE = 1.0


def decode_boxes(deltas: jnp.ndarray, boxes: jnp.ndarray, weights: Sequence[float],
                 clip: float = BBOX_XFORM_CLIP) -> jnp.ndarray:
  """Apply deltas to reference boxes.

  Args:
    deltas: [N, 4*C] float32 (dx, dy, dw, dh) per class (C = 1 for the RPN).
    boxes: [N, 4] xyxy reference boxes (anchors or proposals).
    weights: (wx, wy, ww, wh): (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
    clip: upper clamp of dw, dh (log(1000/16)); there is no lower clamp.
  Returns:
    [N, 4*C] decoded xyxy boxes.
  """
  wx, wy, ww, wh = (jnp.float32(w) for w in weights)
  widths = boxes[:, 2] - boxes[:, 0] + TO_REMOVE
  heights = boxes[:, 3] - boxes[:, 1] + TO_REMOVE
  ctr_x = boxes[:, 0] + jnp.float32(0.5) * widths
  ctr_y = boxes[:, 1] + jnp.float32(0.5) * heights
  dx = deltas[:, 0::4] / wx
  dy = deltas[:, 1::4] / wy
  dw = jnp.minimum(deltas[:, 2::4] / ww, jnp.float32(clip))
  dh = jnp.minimum(deltas[:, 3::4] / wh, jnp.float32(clip))
  pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
  pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
  pred_w = jnp.exp(dw) * widths[:, None]
  pred_h = jnp.exp(dh) * heights[:, None]
  half = jnp.float32(0.5)
  x1 = pred_ctr_x - half * pred_w
  y1 = pred_ctr_y - half * pred_h
  x2 = pred_ctr_x + half * pred_w - TO_REMOVE
  y2 = pred_ctr_y + half * pred_h - TO_REMOVE
  out = jnp.stack([x1, y1, x2, y2], axis=-1)  # [N, C, 4]
  return out.reshape(deltas.shape)


def encode_boxes(gt_boxes: jnp.ndarray, boxes: jnp.ndarray,
                 weights: Sequence[float]) -> jnp.ndarray:
  """Regression targets of gt_boxes [N, 4] w.r.t. reference boxes [N, 4] -> [N, 4] (training)."""
  wx, wy, ww, wh = (jnp.float32(w) for w in weights)
  ex_w = boxes[:, 2] - boxes[:, 0] + TO_REMOVE
  ex_h = boxes[:, 3] - boxes[:, 1] + TO_REMOVE
  ex_x = boxes[:, 0] + jnp.float32(0.5) * ex_w
  ex_y = boxes[:, 1] + jnp.float32(0.5) * ex_h
  gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + TO_REMOVE
  gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + TO_REMOVE
  gt_x = gt_boxes[:, 0] + jnp.float32(0.5) * gt_w
  gt_y = gt_boxes[:, 1] + jnp.float32(0.5) * gt_h
  dx = wx * (gt_x - ex_x) / ex_w
  dy = wy * (gt_y - ex_y) / ex_h
  dw = ww * jnp.log(gt_w / ex_w)
  dh = wh * jnp.log(gt_h / ex_h)
  return jnp.stack([dx, dy, dw, dh], axis=1)
