"""Deformable convolution v1 (SPEC §2.2, `csrc/cuda/deform_conv_kernel_cuda.cu`), NHWC.

For output (ho, wo) and tap (i, j), k = 3i + j (row-major over the kernel), the sample point is
`(ho*stride - pad + i*dil + dy_k, wo*stride - pad + j*dil + dx_k)` with offset channels
`2k` = dy and `2k+1` = dx per deformable group (channel `g*2*kh*kw + 2k (+1)`). A point is 0 unless
`-1 < y < H and -1 < x < W`; otherwise it is bilinear with floor corners, corners outside
`[0, H-1] x [0, W-1]` contributing 0. The sampled columns are then convolved (grouped) with the
kernel. H, W are the map's valid size (may be traced; the map sits in a static canvas).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _sample_columns(x, dy, dx, base_y, base_x, height, width):
  """x [H, W, C]; dy, dx [Ho, Wo, T]; base_y [Ho, T], base_x [Wo, T] -> [Ho, Wo, T, C]."""
  hc, wc, c = x.shape
  y = base_y[:, None, :] + dy
  xx = base_x[None, :, :] + dx
  h_f = height.astype(jnp.float32)
  w_f = width.astype(jnp.float32)
  inside = (y > -1.0) & (xx > -1.0) & (y < h_f) & (xx < w_f)
  y_low = jnp.floor(y)
  x_low = jnp.floor(xx)
  lh = y - y_low
  lw = xx - x_low
  hh = 1.0 - lh
  hw = 1.0 - lw
  y_low = y_low.astype(jnp.int32)
  x_low = x_low.astype(jnp.int32)
  y_high = y_low + 1
  x_high = x_low + 1
  flat = x.reshape(hc * wc, c)

  def corner(yi, xi, ok):
    # The kernel's tests plus the bounds they imply for samples inside (-1, H) x (-1, W): the
    # same values there, and masked-out samples never read the canvas beyond the valid map
    # (whose NaN/inf would otherwise turn the zero cotangent of `where` into NaN gradients).
    ok = ok & (yi >= 0) & (yi <= height - 1) & (xi >= 0) & (xi <= width - 1)
    idx = jnp.clip(yi, 0, hc - 1) * wc + jnp.clip(xi, 0, wc - 1)
    return jnp.where(ok[..., None], flat[idx], 0.0)

  v1 = corner(y_low, x_low, (y_low >= 0) & (x_low >= 0))
  v2 = corner(y_low, x_high, (y_low >= 0) & (x_high <= width - 1))
  v3 = corner(y_high, x_low, (y_high <= height - 1) & (x_low >= 0))
  v4 = corner(y_high, x_high, (y_high <= height - 1) & (x_high <= width - 1))
  w1, w2, w3, w4 = (hh * hw)[..., None], (hh * lw)[..., None], (lh * hw)[..., None], (lh * lw)[..., None]
  val = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
  return jnp.where(inside[..., None], val, 0.0)


def deform_conv(x: jnp.ndarray, offset: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1,
                padding: int = 1, dilation: int = 1, groups: int = 1,
                deformable_groups: int = 1, feature_hw=None) -> jnp.ndarray:
  """Deformable conv v1.

  Args:
    x: [N, H, W, C] input canvases.
    offset: [N, Ho, Wo, deformable_groups*2*kh*kw] (dy, dx) per tap, output resolution.
    kernel: [kh, kw, C/groups, F].
    stride, padding, dilation: as the PyTorch module.
    groups: conv groups; deformable_groups: offset groups (channels split evenly).
    feature_hw: [N, 2] int32 valid input sizes (default: the canvas).
  Returns:
    [N, Ho, Wo, F] (no bias).
  """
  n, hc, wc, c = x.shape
  kh, kw, cg, f = kernel.shape
  _, ho, wo, _ = offset.shape
  taps = kh * kw
  dg = deformable_groups
  if c % dg or c % groups or f % groups or cg * groups != c:
    raise ValueError(f"deform_conv: channels {c}, groups {groups}, deformable groups {dg}, "
                     f"kernel {kernel.shape} are inconsistent")
  if feature_hw is None:
    feature_hw = jnp.tile(jnp.asarray([[hc, wc]], jnp.int32), (n, 1))
  ti = jnp.repeat(jnp.arange(kh), kw)  # tap k -> row i
  tj = jnp.tile(jnp.arange(kw), kh)  # tap k -> col j
  base_y = (jnp.arange(ho)[:, None] * stride - padding + ti[None, :] * dilation).astype(jnp.float32)
  base_x = (jnp.arange(wo)[:, None] * stride - padding + tj[None, :] * dilation).astype(jnp.float32)

  def one(xi, oi, hw):
    off = oi.reshape(ho, wo, dg, taps, 2)
    cols = []
    for g in range(dg):
      xs = xi[..., g * (c // dg):(g + 1) * (c // dg)]
      cols.append(_sample_columns(xs, off[:, :, g, :, 0], off[:, :, g, :, 1],
                                  base_y, base_x, hw[0], hw[1]))
    col = jnp.concatenate(cols, axis=-1)  # [Ho, Wo, T, C]
    col = col.reshape(ho, wo, taps, groups, cg)
    k = kernel.reshape(taps, cg, groups, f // groups)
    out = jnp.einsum("hwtgc,tcgf->hwgf", col, k.astype(col.dtype),
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(ho, wo, f)

  return jax.vmap(one)(x, offset, feature_hw)
