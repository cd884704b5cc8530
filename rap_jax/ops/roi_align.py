"""ROIAlign with maskrcnn-benchmark's legacy semantics (SPEC §2.5), on static canvases.

No half-pixel offset ("aligned=False"), fixed sampling ratio, float32 arithmetic in the order of
`csrc/cpu/ROIAlign_cpu.cpp` / `csrc/cuda/ROIAlign_cuda.cu`:

  start = box_xy1*scale; end = box_xy2*scale; roi = max(end - start, 1); bin = roi / P
  y = start_y + ph*bin_h + (iy + .5)*bin_h/grid  (x likewise)
  bilinear(y, x): 0 if y < -1 or y > H or x < -1 or x > W; y = max(y, 0); y0 = int(y);
                  y0 >= H-1 -> y0 = y1 = H-1, y = y0; else y1 = y0 + 1 (x likewise)
  out = (sum over grid*grid samples of w1*v1 + w2*v2 + w3*v3 + w4*v4) / (grid*grid)

H, W are the feature map's VALID size (may be traced): the map sits in the top-left corner of
a static canvas.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _axis_samples(start, bin_size, pooled: int, grid: int):
  """Sample coordinates [K, pooled, grid] along one axis, in the kernel's operation order."""
  p = jnp.arange(pooled, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(grid, dtype=jnp.float32)[None, None, :]
  return (start[:, None, None] + p * bin_size[:, None, None] +
          (i + jnp.float32(0.5)) * bin_size[:, None, None] / jnp.float32(grid))


def _bilinear_setup(c, size):
  """Per-coordinate corner indices and weights for one axis (`bilinear_interpolate`)."""
  size_f = size.astype(jnp.float32)
  outside = (c < -1.0) | (c > size_f)
  c = jnp.maximum(c, 0.0)
  lo = c.astype(jnp.int32)  # c >= 0: truncation == floor
  at_edge = lo >= size - 1
  lo = jnp.where(at_edge, size - 1, lo)
  hi = jnp.where(at_edge, size - 1, lo + 1)
  c = jnp.where(at_edge, lo.astype(jnp.float32), c)
  l = c - lo.astype(jnp.float32)
  h = jnp.float32(1.0) - l
  return lo, hi, l, h, outside


def roi_align_flat(flat: jnp.ndarray, boxes: jnp.ndarray, scale, height, width, row_stride,
                   offset, output_size: int, sampling_ratio: int = 2) -> jnp.ndarray:
  """ROIAlign of K boxes, each from its own map inside one flattened feature buffer.

  Args:
    flat: [M, C] rows of one or several row-major feature canvases, concatenated.
    boxes: [K, 4] xyxy in input-image pixels.
    scale: [K] float32 spatial scale of each box's map.
    height, width: [K] int32 valid size of each box's map.
    row_stride: [K] int32 canvas width of each box's map (row length in `flat`).
    offset: [K] int32 first row of each box's map in `flat`.
    output_size: pooled size P.
    sampling_ratio: samples per bin per axis (> 0; 2 in every RAP config).
  Returns:
    [K, P, P, C].
  """
  if sampling_ratio <= 0:
    raise ValueError("adaptive sampling (sampling_ratio <= 0) is not used by RAP")
  start_x = boxes[:, 0] * scale
  start_y = boxes[:, 1] * scale
  end_x = boxes[:, 2] * scale
  end_y = boxes[:, 3] * scale
  roi_w = jnp.maximum(end_x - start_x, 1.0)
  roi_h = jnp.maximum(end_y - start_y, 1.0)
  bin_w = roi_w / jnp.float32(output_size)
  bin_h = roi_h / jnp.float32(output_size)
  g = sampling_ratio
  ys = _axis_samples(start_y, bin_h, output_size, g)  # [K, P, g]
  xs = _axis_samples(start_x, bin_w, output_size, g)
  y0, y1, ly, hy, y_out = _bilinear_setup(ys, height[:, None, None])
  x0, x1, lx, hx, x_out = _bilinear_setup(xs, width[:, None, None])
  base = offset[:, None, None, None, None]
  stride = row_stride[:, None, None, None, None]

  def gather(yi, xi):  # [K, P, g] x [K, P, g] -> [K, P(y), g(y), P(x), g(x), C]
    return flat[base + yi[:, :, :, None, None] * stride + xi[:, None, None, :, :]]

  def w(a, b):  # outer product of y- and x- weights -> [K, P, g, P, g, 1]
    return (a[:, :, :, None, None] * b[:, None, None, :, :])[..., None]

  v1, v2 = gather(y0, x0), gather(y0, x1)
  v3, v4 = gather(y1, x0), gather(y1, x1)
  val = w(hy, hx) * v1 + w(hy, lx) * v2 + w(ly, hx) * v3 + w(ly, lx) * v4
  outside = (y_out[:, :, :, None, None] | x_out[:, None, None, :, :])[..., None]
  val = jnp.where(outside, jnp.zeros((), val.dtype), val)
  # Accumulate the g*g samples in the kernel's order (iy outer, ix inner), then divide.
  acc = jnp.zeros(val.shape[:2] + val.shape[3:4] + val.shape[5:], val.dtype)
  for iy in range(g):
    for ix in range(g):
      acc = acc + val[:, :, iy, :, ix]
  return acc / jnp.asarray(g * g, val.dtype)


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray, spatial_scale: float,
              output_size: int, sampling_ratio: int = 2, feature_hw=None) -> jnp.ndarray:
  """ROIAlign of K boxes from one feature map.

  Args:
    features: [Hc, Wc, C] feature canvas of one image.
    boxes: [K, 4] xyxy in input-image pixels.
    spatial_scale: 1/stride of this level.
    output_size: pooled size P (7 box head, 14 mask head).
    sampling_ratio: samples per bin per axis.
    feature_hw: valid (H, W) of the map inside the canvas (ints or traced); default the canvas.
  Returns:
    [K, P, P, C] pooled features (same dtype as features).
  """
  hc, wc, _ = features.shape
  k = boxes.shape[0]
  if feature_hw is None:
    feature_hw = (hc, wc)
  full = lambda v: jnp.full((k,), v, jnp.int32)
  return roi_align_flat(features.reshape(hc * wc, -1), boxes,
                        jnp.full((k,), spatial_scale, jnp.float32),
                        full(feature_hw[0]), full(feature_hw[1]), full(wc), full(0),
                        output_size, sampling_ratio)
