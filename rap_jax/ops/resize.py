"""PyTorch-1.0 bilinear interpolation and nearest x2 upsampling, static canvases (SPEC §10.1).

The original uses bilinear resizes in three places: the semantic head's x2/x4 upsampling and
branch alignment (align_corners=True), the final semantic resize to the original image size
(align_corners=True) and mask pasting (align_corners=False). `jax.image.resize` implements
neither rule, so the gather formula is written out, with PyTorch's float32 operation order:

  scale = (in-1)/(out-1) if align_corners else in/out          (0 if out == 1)
  src   = scale*dst      if align_corners else max(scale*(dst+0.5) - 0.5, 0)
  i0 = min(floor(src), in-1); i1 = i0 + (i0 < in-1); l1 = src - i0; l0 = 1 - l1
  out = l0y*(l0x*v[i0y,i0x] + l1x*v[i0y,i1x]) + l1y*(l0x*v[i1y,i0x] + l1x*v[i1y,i1x])

Sizes may be traced scalars: a map lives in a static canvas whose top-left `in` rows/cols are
valid; outputs beyond `out` are set to zero. That is how one compiled function reproduces the
original for every image size (the original runs each image at its own padded size).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def source_coords_at(dst: jnp.ndarray, in_size, out_size, align_corners: bool):
  """Gather indices and weights for output positions `dst` (float32 array of integers).

  Args:
    dst: [...] float32 output positions.
    in_size, out_size: int scalars (may be traced): valid input / output lengths.
    align_corners: PyTorch's flag.
  Returns:
    (i0, i1, l0, l1): int32 indices and float32 weights shaped like dst.
  """
  in_size = jnp.asarray(in_size, jnp.int32)
  out_size = jnp.asarray(out_size, jnp.int32)
  in_f = in_size.astype(jnp.float32)
  out_f = out_size.astype(jnp.float32)
  if align_corners:
    scale = jnp.where(out_size > 1, (in_f - 1.0) / jnp.maximum(out_f - 1.0, 1.0), 0.0)
    src = scale * dst
  else:
    # PyTorch 1.0 (`linear_upsampling_compute_scale`) uses scale 0 for out == 1 in both modes
    # (src = 0: the first row/col); modern PyTorch (2.x) uses in/out (the centre of the input).
    scale = jnp.where(out_size > 1, in_f / jnp.maximum(out_f, 1.0), 0.0)
    src = jnp.maximum(scale * (dst + jnp.float32(0.5)) - jnp.float32(0.5), 0.0)
  # Equal sizes are an exact copy in PyTorch; the formula gives src == dst exactly then.
  src = jnp.where(in_size == out_size, dst, src)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  i0 = jnp.maximum(i0, 0)
  i1 = i0 + (i0 < in_size - 1).astype(jnp.int32)
  l1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  l0 = jnp.float32(1.0) - l1
  return i0, i1, l0, l1


def source_coords(out_len: int, in_size, out_size, align_corners: bool):
  """Per-axis gather indices and weights for output positions 0..out_len-1.

  Returns (i0, i1, l0, l1, inside): [out_len] int32 indices, float32 weights, and
  bool `dst < out_size`.
  """
  dst = jnp.arange(out_len, dtype=jnp.float32)
  i0, i1, l0, l1 = source_coords_at(dst, in_size, out_size, align_corners)
  inside = jnp.arange(out_len) < jnp.asarray(out_size, jnp.int32)
  return i0, i1, l0, l1, inside


def resize_bilinear(x: jnp.ndarray, out_hw: tuple[int, int], in_size_hw=None,
                    out_size_hw=None, align_corners: bool = False) -> jnp.ndarray:
  """Bilinear resize of x [H, W, C] (or [H, W]) into a static [out_h, out_w(, C)] canvas.

  Args:
    x: [H, W, C] or [H, W] map; only its top-left `in_size_hw` block is read.
    out_hw: static output canvas (out_h, out_w).
    in_size_hw: (h, w) valid input size (ints or traced scalars); default the full x.
    out_size_hw: (h, w) valid output size; default the full canvas. Beyond it, zeros.
    align_corners: PyTorch's flag.
  """
  out_h, out_w = out_hw
  if in_size_hw is None:
    in_size_hw = x.shape[:2]
  if out_size_hw is None:
    out_size_hw = out_hw
  i0y, i1y, l0y, l1y, iny = source_coords(out_h, in_size_hw[0], out_size_hw[0], align_corners)
  i0x, i1x, l0x, l1x, inx = source_coords(out_w, in_size_hw[1], out_size_hw[1], align_corners)
  extra = (None,) * (x.ndim - 2)
  r0 = x[i0y]  # [out_h, W, ...]
  r1 = x[i1y]
  v00, v01 = r0[:, i0x], r0[:, i1x]  # [out_h, out_w, ...]
  v10, v11 = r1[:, i0x], r1[:, i1x]
  wy0 = l0y[(slice(None), None) + extra]
  wy1 = l1y[(slice(None), None) + extra]
  wx0 = l0x[(None, slice(None)) + extra]
  wx1 = l1x[(None, slice(None)) + extra]
  out = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
  inside = (iny[:, None] & inx[None, :])[(Ellipsis,) + extra]
  return jnp.where(inside, out, jnp.zeros((), out.dtype))


def interpolation_matrix(out_len: int, in_len: int, in_size, out_size,
                         align_corners: bool) -> jnp.ndarray:
  """One axis of `resize_bilinear` as a matrix: [out_len, in_len] float32 whose row `dst` holds
  l0 at column i0 and l1 at column i1 (their sum where i0 == i1), zero rows at dst >= out_size.

  `M_y @ x @ M_x^T` is the bilinear resize up to float32 rounding (a sum of the same four
  products in another order): training uses it because the gradient of a matmul is a matmul,
  where the gather form's is a scatter-add (10x slower on CPU for full-resolution logits).
  """
  i0, i1, l0, l1, inside = source_coords(out_len, in_size, out_size, align_corners)
  cols = jnp.arange(in_len)[None, :]
  m = (jnp.where(cols == i0[:, None], l0[:, None], 0.0) +
       jnp.where(cols == i1[:, None], l1[:, None], 0.0))
  return jnp.where(inside[:, None], m, 0.0).astype(jnp.float32)


def resize_bilinear_matmul(x: jnp.ndarray, out_hw: tuple[int, int], in_size_hw=None,
                           out_size_hw=None, align_corners: bool = False) -> jnp.ndarray:
  """`resize_bilinear` of x [H, W, C] as two matmuls with `interpolation_matrix`: columns first,
  then rows, which is PyTorch's order l0y*(l0x*v00 + l1x*v01) + l1y*(l0x*v10 + l1x*v11) (the
  other terms are exact zeros; a fused multiply-add may move a value by an ulp). Entries outside
  the valid input block are zeroed first, so they are never read, as in the gather form.

  The network's resizes use it (semantic head): XLA runs a small matmul and its transpose far
  faster than the gathers and scatter-adds of the gather form (a seventh of a CPU training step).
  """
  if in_size_hw is None:
    in_size_hw = x.shape[:2]
  if out_size_hw is None:
    out_size_hw = out_hw
  h, w = x.shape[:2]
  rows_ok = jnp.arange(h) < jnp.asarray(in_size_hw[0], jnp.int32)
  cols_ok = jnp.arange(w) < jnp.asarray(in_size_hw[1], jnp.int32)
  extra = (None,) * (x.ndim - 2)
  inside = (rows_ok[:, None] & cols_ok[None, :])[(Ellipsis,) + extra]
  x = jnp.where(inside, x, jnp.zeros((), x.dtype))
  my = interpolation_matrix(out_hw[0], h, in_size_hw[0], out_size_hw[0], align_corners)
  mx = interpolation_matrix(out_hw[1], w, in_size_hw[1], out_size_hw[1], align_corners)
  hi = jax.lax.Precision.HIGHEST
  cols = jnp.einsum("pw,hw...->hp...", mx, x, precision=hi)
  return jnp.einsum("oh,hp...->op...", my, cols, precision=hi).astype(x.dtype)


def upsample_nearest2x(x: jnp.ndarray) -> jnp.ndarray:
  """Nearest x2 upsampling (`F.interpolate(scale_factor=2, mode='nearest')`): [N,H,W,C] -> [N,2H,2W,C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
