"""ResNet / ResNeXt body with FrozenBatchNorm (SPEC §2.2, `modeling/backbone/resnet.py`).

Returns C2..C5 (stages `layer1..layer4`). Stride sits on `conv1` (STRIDE_IN_1X1, MSRA R-50/101)
or on `conv2` (ResNeXt). DCN stages replace `conv2` by a deformable conv with its offset conv
(`conv2.offset`, `conv2.conv`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rap_jax.modeling.layers import FrozenBatchNorm, conv, mask_invalid, valid_hw
from rap_jax.ops.deform_conv import deform_conv

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class DFConv2d(nn.Module):
  """`DFConv2d` (DCNv1, no modulation): `offset` conv (bias) then `conv` deformable conv."""
  features: int
  stride: int = 1
  groups: int = 1
  deformable_groups: int = 1

  @nn.compact
  def __call__(self, x, feature_hw):
    offset = conv(self.deformable_groups * 18, 3, self.stride, name="offset")(x)
    return DeformConv(self.features, self.stride, self.groups, self.deformable_groups,
                      name="conv")(x, offset, feature_hw)


class DeformConv(nn.Module):
  """The deformable 3x3 conv (no bias): kernel (3, 3, C/groups, F)."""
  features: int
  stride: int = 1
  groups: int = 1
  deformable_groups: int = 1

  @nn.compact
  def __call__(self, x, offset, feature_hw):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, c // self.groups, self.features))
    return deform_conv(x, offset, kernel, stride=self.stride, padding=1, groups=self.groups,
                       deformable_groups=self.deformable_groups, feature_hw=feature_hw)


class Downsample(nn.Module):
  """The shortcut projection: `downsample.0` 1x1 conv (no bias), `downsample.1` FrozenBN."""
  out_channels: int
  stride: int

  @nn.compact
  def __call__(self, x):
    x = conv(self.out_channels, 1, self.stride, bias=False, name="0")(x)
    return FrozenBatchNorm(self.out_channels, name="1")(x)


class Bottleneck(nn.Module):
  """`BottleneckWithFixedBatchNorm`; `downsample` only when in and out widths differ."""
  in_channels: int
  bottleneck_channels: int
  out_channels: int
  num_groups: int = 1
  stride_in_1x1: bool = True
  stride: int = 1
  dcn: bool = False
  deformable_groups: int = 1

  @nn.compact
  def __call__(self, x, padded_hw, in_stride: int):
    """x: [N, h, w, C_in] at feature stride `in_stride` -> [N, h/s, w/s, C_out]."""
    identity = x
    if self.in_channels != self.out_channels:
      identity = Downsample(self.out_channels, self.stride, name="downsample")(x)
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    out = conv(self.bottleneck_channels, 1, s1, bias=False, name="conv1")(x)
    out = nn.relu(FrozenBatchNorm(self.bottleneck_channels, name="bn1")(out))
    mid_stride = in_stride * s1
    out = mask_invalid(out, padded_hw, mid_stride)
    if self.dcn:
      hw = None if padded_hw is None else valid_hw(padded_hw, mid_stride)
      out = DFConv2d(self.bottleneck_channels, s3, self.num_groups, self.deformable_groups,
                     name="conv2")(out, hw)
    else:
      out = conv(self.bottleneck_channels, 3, s3, self.num_groups, bias=False,
                 name="conv2")(out)
    out = nn.relu(FrozenBatchNorm(self.bottleneck_channels, name="bn2")(out))
    out = conv(self.out_channels, 1, bias=False, name="conv3")(out)
    out = FrozenBatchNorm(self.out_channels, name="bn3")(out)
    return nn.relu(out + identity)


class Stage(nn.Module):
  """One `layerK`: blocks named '0', '1', ... (state_dict `layerK.<i>.`)."""
  num_blocks: int
  in_channels: int
  bottleneck_channels: int
  out_channels: int
  first_stride: int
  num_groups: int
  stride_in_1x1: bool
  dcn: bool
  deformable_groups: int

  @nn.compact
  def __call__(self, x, padded_hw, in_stride: int):
    c_in, s = self.in_channels, in_stride
    for i in range(self.num_blocks):
      stride = self.first_stride if i == 0 else 1
      x = Bottleneck(c_in, self.bottleneck_channels, self.out_channels, self.num_groups,
                     self.stride_in_1x1, stride, self.dcn, self.deformable_groups,
                     name=str(i))(x, padded_hw, s)
      c_in, s = self.out_channels, s * stride
    return x


class Stem(nn.Module):
  """`StemWithFixedBatchNorm`: conv1 7x7/2 (no bias), bn1, ReLU, max-pool 3x3/2 pad 1."""
  out_channels: int

  @nn.compact
  def __call__(self, x):
    x = conv(self.out_channels, 7, 2, bias=False, name="conv1")(x)
    x = nn.relu(FrozenBatchNorm(self.out_channels, name="bn1")(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(nn.Module):
  """ResNet/ResNeXt body. Fields = `config.model.backbone`."""
  depth: int = 50
  num_groups: int = 1
  width_per_group: int = 64
  stride_in_1x1: bool = True
  stem_out_channels: int = 64
  res2_out_channels: int = 256
  stage_with_dcn: Sequence[bool] = (False, False, False, False)
  deformable_groups: int = 1
  freeze_at: int = 2

  @nn.compact
  def __call__(self, images, padded_hw=None):
    """images: [N, Hc, Wc, 3] normalised BGR canvases; padded_hw: [N, 2] int32 or None.

    Returns:
      (C2, C3, C4, C5): [N, Hc/4, Wc/4, 256] ... [N, Hc/32, Wc/32, 2048] (full-size widths).
    """
    if self.depth not in BLOCKS:
      raise ValueError(f"backbone.depth must be one of {sorted(BLOCKS)}, got {self.depth}")
    x = Stem(self.stem_out_channels, name="stem")(images)
    outs = []
    c_in = self.stem_out_channels
    stride = 4
    for i, n in enumerate(BLOCKS[self.depth]):
      factor = 2 ** i
      out_c = self.res2_out_channels * factor
      bott = self.num_groups * self.width_per_group * factor
      first_stride = 1 if i == 0 else 2
      x = Stage(n, c_in, bott, out_c, first_stride, self.num_groups, self.stride_in_1x1,
                bool(self.stage_with_dcn[i]), self.deformable_groups,
                name=f"layer{i + 1}")(x, padded_hw, stride)
      stride *= first_stride
      c_in = out_c
      outs.append(x)
    return tuple(outs)
