"""ResNet / ResNeXt body with FrozenBatchNorm or GroupNorm (SPEC §2.2, `modeling/backbone/resnet.py`).

Returns C2..C5 (stages `layer1..layer4`). Stride sits on `conv1` (STRIDE_IN_1X1, MSRA R-50/101)
or on `conv2` (ResNeXt). DCN stages replace `conv2` by a deformable conv with its offset conv
(`conv2.offset`, `conv2.conv`).

`STEM_FUNC` / `TRANS_FUNC` pick the normalisation: `StemWithFixedBatchNorm` /
`BottleneckWithFixedBatchNorm` (every original config) or `StemWithGN` / `BottleneckWithGN`
(`group_norm(C)` of `MODEL.GROUP_NORM` in place of each FrozenBN, same names `bn1..3`,
`downsample.1`; statistics over each image's valid block of the canvas). The GN variants start
from the original's init: every conv (but a DCN's) kaiming_uniform(a=1), GN weight 1 / bias 0.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rap_jax.modeling.layers import (KAIMING_UNIFORM_A1, FrozenBatchNorm, GroupNormSpec, conv,
                                     mask_invalid, valid_hw, valid_mask)
from rap_jax.ops.deform_conv import deform_conv

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# RESNETS.STEM_FUNC / TRANS_FUNC -> uses GroupNorm.
STEM_FUNCS = {"StemWithFixedBatchNorm": False, "StemWithGN": True}
TRANS_FUNCS = {"BottleneckWithFixedBatchNorm": False, "BottleneckWithGN": True}


def norm(x, name: str, use_gn: bool, group_norm: GroupNormSpec, padded_hw, stride: int):
  """`bn*` / `downsample.1` on x [N, h, w, C] at feature stride `stride`: FrozenBatchNorm, or
  GroupNorm with statistics over each image's valid block (whole map when padded_hw is None)."""
  if not use_gn:
    return FrozenBatchNorm(x.shape[-1], name=name)(x)
  mask = None if padded_hw is None else valid_mask(padded_hw, stride, x.shape[1:3])
  return group_norm.layer(x.shape[-1], name)(x, mask)


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
  """The shortcut projection: `downsample.0` 1x1 conv (no bias), `downsample.1` FrozenBN / GN."""
  out_channels: int
  stride: int
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, x, padded_hw=None, out_stride: int = 1):
    init = KAIMING_UNIFORM_A1 if self.use_gn else None
    x = conv(self.out_channels, 1, self.stride, bias=False, name="0", kernel_init=init)(x)
    return norm(x, "1", self.use_gn, self.group_norm, padded_hw, out_stride)


class Bottleneck(nn.Module):
  """`BottleneckWithFixedBatchNorm` / `BottleneckWithGN`; `downsample` only when in and out
  widths differ."""
  in_channels: int
  bottleneck_channels: int
  out_channels: int
  num_groups: int = 1
  stride_in_1x1: bool = True
  stride: int = 1
  dcn: bool = False
  deformable_groups: int = 1
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, x, padded_hw, in_stride: int):
    """x: [N, h, w, C_in] at feature stride `in_stride` -> [N, h/s, w/s, C_out]."""
    gn, spec = self.use_gn, self.group_norm
    init = KAIMING_UNIFORM_A1 if gn else None
    out_stride = in_stride * self.stride
    identity = x
    if self.in_channels != self.out_channels:
      identity = Downsample(self.out_channels, self.stride, gn, spec,
                            name="downsample")(x, padded_hw, out_stride)
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    out = conv(self.bottleneck_channels, 1, s1, bias=False, name="conv1", kernel_init=init)(x)
    mid_stride = in_stride * s1
    out = nn.relu(norm(out, "bn1", gn, spec, padded_hw, mid_stride))
    out = mask_invalid(out, padded_hw, mid_stride)
    if self.dcn:
      hw = None if padded_hw is None else valid_hw(padded_hw, mid_stride)
      out = DFConv2d(self.bottleneck_channels, s3, self.num_groups, self.deformable_groups,
                     name="conv2")(out, hw)
    else:
      out = conv(self.bottleneck_channels, 3, s3, self.num_groups, bias=False,
                 name="conv2", kernel_init=init)(out)
    out = nn.relu(norm(out, "bn2", gn, spec, padded_hw, out_stride))
    out = conv(self.out_channels, 1, bias=False, name="conv3", kernel_init=init)(out)
    out = norm(out, "bn3", gn, spec, padded_hw, out_stride)
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
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, x, padded_hw, in_stride: int):
    c_in, s = self.in_channels, in_stride
    for i in range(self.num_blocks):
      stride = self.first_stride if i == 0 else 1
      x = Bottleneck(c_in, self.bottleneck_channels, self.out_channels, self.num_groups,
                     self.stride_in_1x1, stride, self.dcn, self.deformable_groups, self.use_gn,
                     self.group_norm, name=str(i))(x, padded_hw, s)
      c_in, s = self.out_channels, s * stride
    return x


class Stem(nn.Module):
  """`StemWithFixedBatchNorm` / `StemWithGN`: conv1 7x7/2 (no bias), bn1, ReLU, max-pool 3x3/2
  pad 1 (the valid outputs of the pool read only valid inputs: padded sizes are multiples of 32)."""
  out_channels: int
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, x, padded_hw=None):
    init = KAIMING_UNIFORM_A1 if self.use_gn else None
    x = conv(self.out_channels, 7, 2, bias=False, name="conv1", kernel_init=init)(x)
    x = nn.relu(norm(x, "bn1", self.use_gn, self.group_norm, padded_hw, 2))
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
  stem_func: str = "StemWithFixedBatchNorm"            # RESNETS.STEM_FUNC (STEM_FUNCS)
  trans_func: str = "BottleneckWithFixedBatchNorm"     # RESNETS.TRANS_FUNC (TRANS_FUNCS)
  group_norm: GroupNormSpec = GroupNormSpec()          # MODEL.GROUP_NORM, for the *WithGN ones

  @nn.compact
  def __call__(self, images, padded_hw=None):
    """images: [N, Hc, Wc, 3] normalised BGR canvases; padded_hw: [N, 2] int32 or None.

    Returns:
      (C2, C3, C4, C5): [N, Hc/4, Wc/4, 256] ... [N, Hc/32, Wc/32, 2048] (full-size widths).
    """
    if self.depth not in BLOCKS:
      raise ValueError(f"backbone.depth must be one of {sorted(BLOCKS)}, got {self.depth}")
    if self.stem_func not in STEM_FUNCS or self.trans_func not in TRANS_FUNCS:
      raise ValueError(f"backbone.stem_func / trans_func must be in {sorted(STEM_FUNCS)} / "
                       f"{sorted(TRANS_FUNCS)}, got {self.stem_func!r} / {self.trans_func!r}")
    block_gn = TRANS_FUNCS[self.trans_func]
    x = Stem(self.stem_out_channels, STEM_FUNCS[self.stem_func], self.group_norm,
             name="stem")(images, padded_hw)
    outs = []
    c_in = self.stem_out_channels
    stride = 4
    for i, n in enumerate(BLOCKS[self.depth]):
      factor = 2 ** i
      out_c = self.res2_out_channels * factor
      bott = self.num_groups * self.width_per_group * factor
      first_stride = 1 if i == 0 else 2
      x = Stage(n, c_in, bott, out_c, first_stride, self.num_groups, self.stride_in_1x1,
                bool(self.stage_with_dcn[i]), self.deformable_groups, block_gn,
                self.group_norm, name=f"layer{i + 1}")(x, padded_hw, stride)
      stride *= first_stride
      c_in = out_c
      outs.append(x)
    return tuple(outs)
