"""Building blocks shared by the modules: PyTorch-style convs, FrozenBN, masked GroupNorm.

Static canvases: a batch is a stack of images padded into one canvas; image n's network input is
valid in its top-left `padded_hw[n]` block (its own size rounded up to 32, as the original pads a
batch of one). Features at stride s are valid in `ceil(padded_hw / s)`. Every spatial conv reads
zeros outside that block (`mask_invalid`), GroupNorm takes statistics over it, and upsampling
uses its size, so each image's result equals the original run of that image alone.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

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


# The original's initialisers (`modeling/make_layers.py`, `backbone/resnet.py`), used by the layers
# of its GroupNorm variants (trained from scratch). Fan-in/out as PyTorch: kh*kw*(in/groups), kh*kw*out.
KAIMING_UNIFORM_A1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform_(a=1)
KAIMING_NORMAL_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # (fan_out, relu)
NORMAL_001 = nn.initializers.normal(0.01)                                        # normal_(std=0.01)


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pointwise(x: Array, w: Array, strides: tuple[int, int], precision: Any) -> Array:
  """A 1x1 conv [N, H, W, C] x [1, 1, C, F] at `strides`, no padding (forward: lax's conv)."""
  return jax.lax.conv_general_dilated(x, w, strides, ((0, 0), (0, 0)), dimension_numbers=_NHWC,
                                      precision=precision)


def _pointwise_fwd(x, w, strides, precision):
  return _pointwise(x, w, strides, precision), (x, w)


def _pointwise_bwd(strides, precision, res, g):
  # Both gradients as matmuls. XLA:CPU runs the kernel gradient of a 1x1 conv through a
  # convolution kernel 10-50x slower than this dot (0.57 s vs 0.04 s for the mask logits of one
  # small training step, measured); the values are the same sums in another order.
  x, w = res
  sh, sw = strides
  xs = x[:, ::sh, ::sw, :]
  gw = jnp.einsum("nhwc,nhwo->co", xs, g, precision=precision)[None, None]
  gxs = jnp.einsum("nhwo,co->nhwc", g, w[0, 0], precision=precision)
  gx = gxs if (sh, sw) == (1, 1) else jnp.zeros_like(x).at[:, ::sh, ::sw, :].set(gxs)
  return gx.astype(x.dtype), gw.astype(w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, **kwargs) -> Array:
  """`lax.conv_general_dilated` for Flax convs: the same forward everywhere; an ungrouped,
  unpadded 1x1 conv in NHWC/HWIO gets its gradients from matmuls (`_pointwise`)."""
  ones = lambda v: v is None or all(int(d) == 1 for d in v)
  pointwise = (rhs.ndim == 4 and rhs.shape[:2] == (1, 1) and feature_group_count == 1
               and not kwargs and ones(lhs_dilation) and ones(rhs_dilation)
               and all(tuple(p) == (0, 0) for p in padding)
               and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                       _NHWC))
  if not pointwise:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)
  if precision is None:  # the precision in effect now (jax.default_matmul_precision contexts)
    precision = jax.config.jax_default_matmul_precision
  return _pointwise(lhs, rhs, tuple(int(s) for s in window_strides), precision)


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True,
         name: str | None = None, dtype: Any = jnp.float32,
         kernel_init: Callable | None = None) -> nn.Conv:
  """A PyTorch `Conv2d(k, stride, padding=k//2)` as a Flax conv (explicit symmetric padding).

  `kernel_init` None keeps Flax's default (lecun normal); biases start at 0. 1x1 convs take
  their gradients from matmuls (`conv_general_dilated`).
  """
  p = kernel // 2
  init = {} if kernel_init is None else {"kernel_init": kernel_init}
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=bias, name=name, dtype=dtype,
                 conv_general_dilated=conv_general_dilated, **init)


@dataclasses.dataclass(frozen=True)
class GroupNormSpec:
  """`MODEL.GROUP_NORM` (`config.model.group_norm`): the GroupNorm of the `USE_GN` / `*WithGN`
  options. Exactly one of `dim_per_gp` (channels per group) and `num_groups` is -1."""
  dim_per_gp: int = -1
  num_groups: int = 32
  epsilon: float = 1e-5

  def groups(self, channels: int) -> int:
    """`get_group_gn(channels, dim_per_gp, num_groups)`: the group count for `channels`."""
    if (self.dim_per_gp == -1) == (self.num_groups == -1):
      raise ValueError(f"GroupNorm: exactly one of dim_per_gp={self.dim_per_gp} and "
                       f"num_groups={self.num_groups} must be -1")
    if self.dim_per_gp > 0:
      if channels % self.dim_per_gp:
        raise ValueError(f"GroupNorm: {channels} channels not divisible by dim_per_gp="
                         f"{self.dim_per_gp}")
      return channels // self.dim_per_gp
    if self.num_groups <= 0 or channels % self.num_groups:
      raise ValueError(f"GroupNorm: {channels} channels not divisible by num_groups="
                       f"{self.num_groups}")
    return self.num_groups

  def layer(self, channels: int, name: str) -> "MaskedGroupNorm":
    """The original's `group_norm(channels)`: GroupNorm(groups(channels), channels, eps)."""
    return MaskedGroupNorm(self.groups(channels), self.epsilon, name=name)


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
  """`nn.GroupNorm(num_groups, C, eps)` with statistics over each sample's valid block.

  x: [N, ..., C] (NHWC maps, or [N, C] vectors as PyTorch's GroupNorm on (N, C)); statistics per
  sample and group over every non-batch axis and the group's channels, biased variance as
  PyTorch, in float32. mask: optional [N, ..., 1] bool (True = valid): only valid positions
  count; the output elsewhere is normalised with the valid statistics (and is read by nothing).
  Params `scale`, `bias` (PyTorch `weight`, `bias`; init 1 and 0).
  """
  num_groups: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    shape, c = x.shape, x.shape[-1]
    g = self.num_groups
    if c % g:
      raise ValueError(f"GroupNorm: {c} channels not divisible by {g} groups")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    xf = x.astype(jnp.float32).reshape(shape[:-1] + (g, c // g))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # every axis but batch and group
    if mask is None:
      mean = jnp.mean(xf, axis=axes, keepdims=True)
      var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
    else:
      m = mask.reshape(shape[:-1] + (1, 1))
      count = jnp.sum(m.astype(jnp.float32), axis=axes, keepdims=True) * (c // g)
      zero = jnp.zeros((), jnp.float32)
      mean = jnp.sum(jnp.where(m, xf, zero), axis=axes, keepdims=True) / count
      var = jnp.sum(jnp.where(m, jnp.square(xf - mean), zero), axis=axes, keepdims=True) / count
    y = (xf - mean) * jax.lax.rsqrt(var + jnp.float32(self.epsilon))
    y = y.reshape(shape) * scale + bias
    return y.astype(x.dtype)


class ConvGroupNorm(nn.Module):
  """The original's `Sequential(conv (no bias), group_norm(features))` of its `use_gn` helpers
  (`conv_with_kaiming_uniform`, `make_conv3x3`): children `0` (conv) and `1` (GroupNorm).

  x: [N, h, w, C] -> [N, h, w, features]; mask as `MaskedGroupNorm` (None: whole map).
  """
  features: int
  kernel: int
  group_norm: GroupNormSpec
  kernel_init: Callable = KAIMING_UNIFORM_A1

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    x = conv(self.features, self.kernel, bias=False, name="0", kernel_init=self.kernel_init)(x)
    return self.group_norm.layer(self.features, "1")(x, mask)


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
