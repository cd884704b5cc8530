"""FPN with P2..P6 (SPEC §2.3, `modeling/backbone/fpn.py`). No ReLU (`FPN.USE_RELU` False).

`fpn_inner{1..4}` (1x1, bias) lift C2..C5 to `out_channels`; `fpn_layer{1..4}` (3x3, bias) give
P2..P5; top-down uses nearest x2 upsampling; P6 = max-pool(kernel 1, stride 2) of P5 = P5[::2, ::2].

`FPN.USE_GN` (`use_gn`): each of those convs becomes the original's
`conv_with_kaiming_uniform(use_gn=True)` block, `fpn_inner1.0` conv (no bias, kaiming_uniform a=1)
+ `fpn_inner1.1` GroupNorm of `MODEL.GROUP_NORM`, with statistics over each image's valid block.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rap_jax.modeling.layers import ConvGroupNorm, GroupNormSpec, conv, mask_invalid, valid_mask
from rap_jax.ops.resize import upsample_nearest2x

STRIDES = (4, 8, 16, 32, 64)


class FPN(nn.Module):
  """Fields = `config.model.fpn` (+ `group_norm` = `config.model.group_norm`)."""
  out_channels: int = 256
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  def _block(self, name: str, kernel: int, x, padded_hw, stride: int):
    """One `fpn_inner*` / `fpn_layer*` on x [N, h, w, C] at feature stride `stride`."""
    if not self.use_gn:
      return conv(self.out_channels, kernel, name=name)(x)
    mask = None if padded_hw is None else valid_mask(padded_hw, stride, x.shape[1:3])
    return ConvGroupNorm(self.out_channels, kernel, self.group_norm, name=name)(x, mask)

  @nn.compact
  def __call__(self, feats: Sequence, padded_hw=None):
    """feats: (C2, C3, C4, C5) [N, h_l, w_l, C_l] -> (P2, P3, P4, P5, P6), `out_channels` each."""
    inner = lambda k, x: self._block(f"fpn_inner{k + 1}", 1, x, padded_hw, STRIDES[k])
    layer = lambda k, x: self._block(f"fpn_layer{k + 1}", 3, mask_invalid(x, padded_hw, STRIDES[k]),
                                     padded_hw, STRIDES[k])
    last = inner(3, feats[3])
    outs = [layer(3, last)]
    for k in (2, 1, 0):
      last = inner(k, feats[k]) + upsample_nearest2x(last)
      outs.insert(0, layer(k, last))
    outs.append(outs[-1][:, ::2, ::2, :])
    return tuple(outs)
