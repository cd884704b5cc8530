"""`paste_mask_in_image` of the original Masker (SPEC §4.1 step 3), literally."""
from __future__ import annotations

import numpy as np

from rap_jax.reference.resize import resize_bilinear


def paste_mask(mask: np.ndarray, box: np.ndarray, im_h: int, im_w: int,
               threshold: float = 0.5, padding: int = 1) -> np.ndarray:
  """mask [M, M] probabilities, box [4] xyxy (original pixels) -> [im_h, im_w] bool."""
  f = np.float32
  m = mask.shape[0]
  scale = float(m + 2 * padding) / m
  padded = np.zeros((m + 2 * padding,) * 2, np.float32)
  padded[padding:-padding, padding:-padding] = mask
  box = np.asarray(box, np.float32)
  w_half = f(f(box[2] - box[0]) * f(0.5)) * f(scale)
  h_half = f(f(box[3] - box[1]) * f(0.5)) * f(scale)
  x_c = f(f(box[2] + box[0]) * f(0.5))
  y_c = f(f(box[3] + box[1]) * f(0.5))
  x0, y0 = int(f(x_c - w_half)), int(f(y_c - h_half))  # int32 cast truncates toward zero
  x1, y1 = int(f(x_c + w_half)), int(f(y_c + h_half))
  w = max(x1 - x0 + 1, 1)
  h = max(y1 - y0 + 1, 1)
  resized = resize_bilinear(padded, h, w, align_corners=False) > f(threshold)
  out = np.zeros((im_h, im_w), bool)
  xa, xb = max(x0, 0), min(x1 + 1, im_w)
  ya, yb = max(y0, 0), min(y1 + 1, im_h)
  if xb > xa and yb > ya:
    out[ya:yb, xa:xb] = resized[ya - y0:yb - y0, xa - x0:xb - x0]
  return out
