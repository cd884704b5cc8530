"""Deformable convolution v1 of `deform_conv_kernel_cuda.cu` (SPEC §2.2), with loops."""
from __future__ import annotations

import math

import numpy as np


def _im2col_bilinear(img: np.ndarray, h: float, w: float) -> np.ndarray:
  """`deformable_im2col_bilinear` on img [H, W, C] at (h, w) (inside (-1, H) x (-1, W))."""
  height, width = img.shape[:2]
  h_low, w_low = math.floor(h), math.floor(w)
  h_high, w_high = h_low + 1, w_low + 1
  lh, lw = h - h_low, w - w_low
  hh, hw = 1 - lh, 1 - lw
  zero = np.zeros(img.shape[2], np.float64)
  v1 = img[h_low, w_low] if (h_low >= 0 and w_low >= 0) else zero
  v2 = img[h_low, w_high] if (h_low >= 0 and w_high <= width - 1) else zero
  v3 = img[h_high, w_low] if (h_high <= height - 1 and w_low >= 0) else zero
  v4 = img[h_high, w_high] if (h_high <= height - 1 and w_high <= width - 1) else zero
  return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def deform_conv(x: np.ndarray, offset: np.ndarray, weight: np.ndarray, stride: int = 1,
                pad: int = 1, dilation: int = 1, groups: int = 1,
                deformable_groups: int = 1) -> np.ndarray:
  """Reference deformable conv in float64.

  Args:
    x: [H, W, C] one image (NHWC without batch).
    offset: [Ho, Wo, deformable_groups * 2 * kh * kw], channel 2k = dy, 2k+1 = dx of tap
      k = i*kw + j, per deformable group.
    weight: [F, C/groups, kh, kw] (PyTorch layout).
  Returns:
    [Ho, Wo, F].
  """
  x = np.asarray(x, np.float64)
  height, width, c = x.shape
  f_out, cg, kh, kw = weight.shape
  ho = (height + 2 * pad - (dilation * (kh - 1) + 1)) // stride + 1
  wo = (width + 2 * pad - (dilation * (kw - 1) + 1)) // stride + 1
  assert offset.shape[:2] == (ho, wo), (offset.shape, ho, wo)
  cpd = c // deformable_groups
  cols = np.zeros((ho, wo, kh * kw, c), np.float64)
  for oy in range(ho):
    for ox in range(wo):
      for i in range(kh):
        for j in range(kw):
          k = i * kw + j
          for g in range(deformable_groups):
            dy = float(offset[oy, ox, g * 2 * kh * kw + 2 * k])
            dx = float(offset[oy, ox, g * 2 * kh * kw + 2 * k + 1])
            h = oy * stride - pad + i * dilation + dy
            w = ox * stride - pad + j * dilation + dx
            if -1 < h < height and -1 < w < width:
              cols[oy, ox, k, g * cpd:(g + 1) * cpd] = _im2col_bilinear(
                  x[:, :, g * cpd:(g + 1) * cpd], h, w)
  out = np.zeros((ho, wo, f_out), np.float64)
  fg = f_out // groups
  for gi in range(groups):
    wgt = np.asarray(weight[gi * fg:(gi + 1) * fg], np.float64).reshape(fg, cg, kh * kw)
    col = cols[:, :, :, gi * cg:(gi + 1) * cg]  # [Ho, Wo, T, cg]
    out[:, :, gi * fg:(gi + 1) * fg] = np.einsum("hwtc,fct->hwf", col, wgt)
  return out
