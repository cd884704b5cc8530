"""Building blocks shared by the modules: PyTorch-style convs, FrozenBN, masked GroupNorm.

Static canvases: a batch is a stack of images padded into one canvas; image n's network input is
valid in its top-left `padded_hw[n]` block (its own size rounded up to 32, as the original pads a
batch of one). Features at stride s are valid in `ceil(padded_hw / s)`. Every spatial conv reads
zeros outside that block (`mask_invalid`), GroupNorm takes statistics over it, and upsampling
uses its size, so each image's result equals the original run of that image alone.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray


def valid_hw(padded_hw: Array, stride: int) -> Array:
  """[N, 2] int32 padded input sizes -> [N, 2] valid feature sizes at `stride` (ceil)."""
  return (padded_hw + stride - 1) // stride


def valid_mask(padded_hw: Array, stride: int, shape_hw: tuple[int, int]) -> Array:
  """[N, h, w, 1] bool: True inside image n's valid block of a stride-`stride` canvas."""
  return block_mask(valid_hw(padded_hw, stride), shape_hw)


def block_mask(hw: Array, shape_hw: tuple[int, int]) -> Array:
  """[N, h, w, 1] bool: True in the top-left hw[n] block of an (h, w) canvas."""
  rows = jnp.arange(shape_hw[0])[None, :] < hw[:, 0:1]
  cols = jnp.arange(shape_hw[1])[None, :] < hw[:, 1:2]
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def mask_invalid(x: Array, padded_hw: Array | None, stride: int) -> Array:
  """Zero x [N, h, w, C] outside each image's valid block (no-op when padded_hw is None)."""
  if padded_hw is None:
    return x
  return jnp.where(valid_mask(padded_hw, stride, x.shape[1:3]), x, jnp.zeros((), x.dtype))


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True,
         name: str | None = None, dtype: Any = jnp.float32) -> nn.Conv:
  """A PyTorch `Conv2d(k, stride, padding=k//2)` as a Flax conv (explicit symmetric padding)."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=bias, name=name, dtype=dtype)


class FrozenBatchNorm(nn.Module):
  """`FrozenBatchNorm2d` (SPEC §2.2): `y = x*scale + shift`, `scale = weight*rsqrt(var)` (no eps).

  The four buffers are kept verbatim in the 'buffers' collection (never trained) and folded here
  in float32, in the original's operation order.
  """
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (self.features,)
    weight = self.variable("buffers", "weight", jnp.ones, shape).value
    bias = self.variable("buffers", "bias", jnp.zeros, shape).value
    mean = self.variable("buffers", "running_mean", jnp.zeros, shape).value
    var = self.variable("buffers", "running_var", jnp.ones, shape).value
    scale = weight * jax.lax.rsqrt(var)
    shift = bias - mean * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class MaskedGroupNorm(nn.Module):
  """`nn.GroupNorm(num_groups, C, eps=1e-5)` with statistics over each image's valid block.

  Biased variance as PyTorch. Params `scale`, `bias` (PyTorch `weight`, `bias`).
  """
  num_groups: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    n, h, w, c = x.shape
    g = self.num_groups
    if c % g:
      raise ValueError(f"GroupNorm: {c} channels not divisible by {g} groups")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    xf = x.astype(jnp.float32).reshape(n, h, w, g, c // g)
    if mask is None:
      mean = jnp.mean(xf, axis=(1, 2, 4), keepdims=True)
      var = jnp.mean(jnp.square(xf - mean), axis=(1, 2, 4), keepdims=True)
    else:
      m = mask.reshape(n, h, w, 1, 1).astype(jnp.float32)
      count = jnp.sum(m, axis=(1, 2), keepdims=True) * (c // g)
      mean = jnp.sum(xf * m, axis=(1, 2, 4), keepdims=True) / count
      var = jnp.sum(jnp.square(xf - mean) * m, axis=(1, 2, 4), keepdims=True) / count
    y = (xf - mean) * jax.lax.rsqrt(var + jnp.float32(self.epsilon))
    y = y.reshape(n, h, w, c) * scale + bias
    return y.astype(x.dtype)


class ConvTranspose2x2(nn.Module):
  """`ConvTranspose2d(C, F, kernel_size=2, stride=2, padding=0)` (SPEC §2.7).

  out[2y+a, 2x+b, o] = bias[o] + sum_i x[y, x, i] * kernel[a, b, i, o]; kernel (2, 2, C, F).
  """
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("nhwi,abio->nhawbo", x, kernel.astype(x.dtype))
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(x.dtype)


def flatten_hwc(x: Array) -> Array:
  """[K, H, W, C] -> [K, H*W*C]; `convert/` permutes fc weights from PyTorch's (C, H, W) order."""
  return x.reshape(x.shape[0], -1)


def max_pool_2x2(x: Array) -> Array:
  """`F.max_pool2d(x, 2, 2)` on [..., H, W, C] (H, W even)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def stack_sizes(sizes: Sequence[Sequence[int]]) -> Array:
  return jnp.asarray(sizes, jnp.int32)
