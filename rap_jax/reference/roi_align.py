"""ROIAlign of `csrc/cpu/ROIAlign_cpu.cpp` (aligned=False), one bin and sample at a time."""
from __future__ import annotations

import numpy as np


def _bilinear(feat: np.ndarray, y, x):
  """`bilinear_interpolate` of the kernel on feat [H, W, C] -> [C]."""
  f = np.float32
  h, w = feat.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(feat.shape[2], np.float32)
  y = max(y, f(0))
  x = max(x, f(0))
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_high = y_low = h - 1
    y = f(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_high = x_low = w - 1
    x = f(x_low)
  else:
    x_high = x_low + 1
  ly, lx = f(y - y_low), f(x - x_low)
  hy, hx = f(1) - ly, f(1) - lx
  return (hy * hx * feat[y_low, x_low] + hy * lx * feat[y_low, x_high] +
          ly * hx * feat[y_high, x_low] + ly * lx * feat[y_high, x_high])


def roi_align(feat: np.ndarray, boxes: np.ndarray, scale: float, pooled: int,
              sampling_ratio: int = 2) -> np.ndarray:
  """feat [H, W, C], boxes [K, 4] -> [K, P, P, C]."""
  f = np.float32
  feat = np.asarray(feat, np.float32)
  out = np.zeros((len(boxes), pooled, pooled, feat.shape[2]), np.float32)
  for k, b in enumerate(np.asarray(boxes, np.float32)):
    sx, sy, ex, ey = (f(v * f(scale)) for v in b)
    roi_w = max(f(ex - sx), f(1))
    roi_h = max(f(ey - sy), f(1))
    bin_w, bin_h = f(roi_w / f(pooled)), f(roi_h / f(pooled))
    g = sampling_ratio
    for ph in range(pooled):
      for pw in range(pooled):
        acc = np.zeros(feat.shape[2], np.float32)
        for iy in range(g):
          y = f(sy + f(ph) * bin_h + f(f(iy + 0.5) * bin_h) / f(g))
          for ix in range(g):
            x = f(sx + f(pw) * bin_w + f(f(ix + 0.5) * bin_w) / f(g))
            acc = acc + _bilinear(feat, y, x)
        out[k, ph, pw] = acc / f(g * g)
  return out
