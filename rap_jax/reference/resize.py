"""PyTorch bilinear interpolation written pixel by pixel (SPEC §10.1)."""
from __future__ import annotations

import numpy as np


def _coord(dst: int, in_size: int, out_size: int, align_corners: bool):
  f = np.float32
  if in_size == out_size:
    src = f(dst)
  elif align_corners:
    scale = f(in_size - 1) / f(out_size - 1) if out_size > 1 else f(0)
    src = f(scale * f(dst))
  else:
    scale = f(in_size) / f(out_size) if out_size > 1 else f(0)  # PyTorch 1.0: 0 for out == 1
    src = max(f(scale * f(f(dst) + f(0.5)) - f(0.5)), f(0))
  i0 = min(int(np.floor(src)), in_size - 1)
  i1 = i0 + (1 if i0 < in_size - 1 else 0)
  l1 = f(min(max(src - f(i0), f(0)), f(1)))
  return i0, i1, f(f(1) - l1), l1


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int, align_corners: bool) -> np.ndarray:
  """x [H, W] or [H, W, C] float32 -> [out_h, out_w(, C)], one output pixel at a time."""
  x = np.asarray(x, np.float32)
  h, w = x.shape[:2]
  out = np.zeros((out_h, out_w) + x.shape[2:], np.float32)
  for y in range(out_h):
    y0, y1, ly0, ly1 = _coord(y, h, out_h, align_corners)
    for xx in range(out_w):
      x0, x1, lx0, lx1 = _coord(xx, w, out_w, align_corners)
      out[y, xx] = (ly0 * (lx0 * x[y0, x0] + lx1 * x[y0, x1]) +
                    ly1 * (lx0 * x[y1, x0] + lx1 * x[y1, x1]))
  return out
