"""Box utilities with the original's "+1" width convention (SPEC §2.4, §2.10).

One box format everywhere inside rap_jax: xyxy absolute pixels, float32. maskrcnn-benchmark
measures a box as `w = x2 - x1 + 1`; this convention is part of the numerics and kept here.
"""
from __future__ import annotations

import jax.numpy as jnp

TO_REMOVE = 1.0  # maskrcnn-benchmark's "+1"


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """boxes: [..., 4] xyxy -> [...] areas `(x2-x1+1)*(y2-y1+1)` (float32)."""
  return ((boxes[..., 2] - boxes[..., 0] + TO_REMOVE) *
          (boxes[..., 3] - boxes[..., 1] + TO_REMOVE))


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """IoU of every box in a [N, 4] with every box in b [M, 4] -> [N, M] ("+1" areas).

  Operation order follows `boxlist_iou` / the NMS kernels:
  `inter = max(min(x2)-max(x1)+1, 0) * max(min(y2)-max(y1)+1, 0)`, `iou = inter/(Sa+Sb-inter)`.
  """
  area_a = box_area(a)[:, None]
  area_b = box_area(b)[None, :]
  lt_x = jnp.maximum(a[:, None, 0], b[None, :, 0])
  lt_y = jnp.maximum(a[:, None, 1], b[None, :, 1])
  rb_x = jnp.minimum(a[:, None, 2], b[None, :, 2])
  rb_y = jnp.minimum(a[:, None, 3], b[None, :, 3])
  w = jnp.maximum(rb_x - lt_x + TO_REMOVE, 0.0)
  h = jnp.maximum(rb_y - lt_y + TO_REMOVE, 0.0)
  inter = w * h
  return inter / (area_a + area_b - inter)


def clip_boxes(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
  """`BoxList.clip_to_image`: clamp x to [0, width-1], y to [0, height-1].

  boxes: [..., 4] xyxy; height, width: scalars (may be traced), the image size in pixels.
  """
  w = jnp.asarray(width, jnp.float32) - TO_REMOVE
  h = jnp.asarray(height, jnp.float32) - TO_REMOVE
  x1 = jnp.clip(boxes[..., 0], 0.0, w)
  y1 = jnp.clip(boxes[..., 1], 0.0, h)
  x2 = jnp.clip(boxes[..., 2], 0.0, w)
  y2 = jnp.clip(boxes[..., 3], 0.0, h)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def nonempty_boxes(boxes: jnp.ndarray) -> jnp.ndarray:
  """`clip_to_image(remove_empty=True)` keep rule: `x2 > x1 and y2 > y1` -> [...] bool."""
  return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def scale_boxes(boxes: jnp.ndarray, ratio_w, ratio_h) -> jnp.ndarray:
  """`BoxList.resize`: multiply x by ratio_w and y by ratio_h (float32 products)."""
  r = jnp.stack([ratio_w, ratio_h, ratio_w, ratio_h], axis=-1).astype(jnp.float32)
  return boxes * r[..., None, :] if r.ndim > 1 else boxes * r
