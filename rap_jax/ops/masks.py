"""Mask pasting of the original's `Masker(threshold=0.5, padding=1)` (SPEC §4.1 step 3).

Per instance: pad the M x M probability map with a zero border (M+2 square), expand the box
about its centre by (M+2)/M in float32, truncate it to int32, bilinearly resize the padded map
(align_corners=False, PyTorch formula) to the box size (w, h) = (x2-x1+1, y2-y1+1) (>= 1),
threshold `> 0.5`, and paste the window that falls inside the image. Here every instance is
evaluated directly on a static output canvas: pixel (y, x) reads the resized map at
(y - y1, x - x1) if that lies in the box window. This equals the original pixel for pixel except
where the interpolated value is within an ulp or two of the threshold (XLA's fused multiply-adds
change the last bit; tests/test_ops_masks.py bounds it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rap_jax.ops.resize import source_coords_at


def expand_boxes(boxes: jnp.ndarray, scale: float) -> jnp.ndarray:
  """`expand_boxes`: scale boxes [K, 4] about their centres (float32, original op order)."""
  half = jnp.float32(0.5)
  w_half = (boxes[:, 2] - boxes[:, 0]) * half
  h_half = (boxes[:, 3] - boxes[:, 1]) * half
  x_c = (boxes[:, 2] + boxes[:, 0]) * half
  y_c = (boxes[:, 3] + boxes[:, 1]) * half
  w_half = w_half * jnp.float32(scale)
  h_half = h_half * jnp.float32(scale)
  return jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


def _paste_one(mask: jnp.ndarray, box: jnp.ndarray, out_hw: tuple[int, int], image_h, image_w,
               threshold: float) -> jnp.ndarray:
  """One padded mask [M+2, M+2] and its int32 expanded box [4] -> [Hc, Wc] bool."""
  m = mask.shape[0]
  x1, y1, x2, y2 = box[0], box[1], box[2], box[3]
  w = jnp.maximum(x2 - x1 + 1, 1)
  h = jnp.maximum(y2 - y1 + 1, 1)
  hc, wc = out_hw
  ys = jnp.arange(hc, dtype=jnp.int32)
  xs = jnp.arange(wc, dtype=jnp.int32)
  # Position inside the box window (pixels outside the window are masked below).
  i0y, i1y, l0y, l1y = source_coords_at((ys - y1).astype(jnp.float32), m, h, False)
  i0x, i1x, l0x, l1x = source_coords_at((xs - x1).astype(jnp.float32), m, w, False)
  r0 = mask[i0y]  # [Hc, M+2]
  r1 = mask[i1y]
  val = (l0y[:, None] * (l0x[None, :] * r0[:, i0x] + l1x[None, :] * r0[:, i1x]) +
         l1y[:, None] * (l0x[None, :] * r1[:, i0x] + l1x[None, :] * r1[:, i1x]))
  row_in = (ys >= jnp.maximum(y1, 0)) & (ys < jnp.minimum(y2 + 1, image_h)) & (ys - y1 < h)
  col_in = (xs >= jnp.maximum(x1, 0)) & (xs < jnp.minimum(x2 + 1, image_w)) & (xs - x1 < w)
  return (val > jnp.float32(threshold)) & row_in[:, None] & col_in[None, :]


def paste_windows(boxes: jnp.ndarray, image_h, image_w, mask_size: int = 28,
                  padding: int = 1) -> jnp.ndarray:
  """[K, 4] int32 (y0, x0, y1, x1) half-open bounds holding every pixel `paste_masks` can set.

  The pasted window of a box is rows [max(y1, 0), min(y2 + 1, H)) and columns likewise, with
  (x1, y1, x2, y2) the int32 expanded box, clamped into the image (empty when the box is
  degenerate or outside).
  """
  scale = float(mask_size + 2 * padding) / mask_size
  exp = expand_boxes(boxes.astype(jnp.float32), scale).astype(jnp.int32)
  y0 = jnp.clip(exp[:, 1], 0, image_h)
  x0 = jnp.clip(exp[:, 0], 0, image_w)
  y1 = jnp.maximum(jnp.minimum(exp[:, 3] + 1, image_h), y0)
  x1 = jnp.maximum(jnp.minimum(exp[:, 2] + 1, image_w), x0)
  return jnp.stack([y0, x0, y1, x1], axis=1)


def paste_masks(masks: jnp.ndarray, boxes: jnp.ndarray, out_hw: tuple[int, int], image_h,
                image_w, threshold: float = 0.5, padding: int = 1,
                chunk: int = 16, valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Paste K mask probability maps into the original image.

  Args:
    masks: [K, M, M] float32 probabilities (M = 28).
    boxes: [K, 4] xyxy float32 in ORIGINAL image pixels.
    out_hw: static canvas (Hc, Wc) >= the image size.
    image_h, image_w: the original image size (ints or traced); pixels beyond are False.
    threshold: binarisation threshold (`> threshold`).
    padding: zero border added around each map.
    chunk: instances processed together (memory bound: chunk * Hc * Wc floats).
    valid: optional [K] bool; invalid instances give empty masks. On CPU they are skipped (one
      instance at a time with a `cond`); accelerators paste `chunk` instances at once instead.
      Do not vmap this function with `valid` on CPU (a vmapped `cond` runs both branches).
  Returns:
    [K, Hc, Wc] bool masks.
  """
  k, m, _ = masks.shape
  scale = float(m + 2 * padding) / m  # a Python float, cast to float32 in the multiply
  padded = jnp.pad(masks.astype(jnp.float32), ((0, 0), (padding, padding), (padding, padding)))
  exp = expand_boxes(boxes.astype(jnp.float32), scale).astype(jnp.int32)  # truncation
  fn = lambda args: _paste_one(args[0], args[1], out_hw, image_h, image_w, threshold)
  if k == 0:
    return jnp.zeros((0,) + tuple(out_hw), bool)
  if valid is None:
    return jax.lax.map(fn, (padded, exp), batch_size=min(chunk, k))
  empty = jnp.zeros(tuple(out_hw), bool)
  if jax.default_backend() == "cpu":
    skip = lambda args: jax.lax.cond(args[2], lambda: fn(args[:2]), lambda: empty)
    return jax.lax.map(skip, (padded, exp, valid))
  out = jax.lax.map(fn, (padded, exp), batch_size=min(chunk, k))
  return out & valid[:, None, None]
