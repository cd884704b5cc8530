"""FPN with P2..P6 (SPEC §2.3, `modeling/backbone/fpn.py`). No GN, no ReLU.

`fpn_inner{1..4}` (1x1, bias) lift C2..C5 to `out_channels`; `fpn_layer{1..4}` (3x3, bias) give
P2..P5; top-down uses nearest x2 upsampling; P6 = max-pool(kernel 1, stride 2) of P5 = P5[::2, ::2].
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rap_jax.modeling.layers import conv, mask_invalid
from rap_jax.ops.resize import upsample_nearest2x

STRIDES = (4, 8, 16, 32, 64)


class FPN(nn.Module):
  """Fields = `config.model.fpn`."""
  out_channels: int = 256

  @nn.compact
  def __call__(self, feats: Sequence, padded_hw=None):
    """feats: (C2, C3, C4, C5) [N, h_l, w_l, C_l] -> (P2, P3, P4, P5, P6), `out_channels` each."""
    inner = [conv(self.out_channels, 1, name=f"fpn_inner{i + 1}") for i in range(4)]
    layer = [conv(self.out_channels, 3, name=f"fpn_layer{i + 1}") for i in range(4)]
    last = inner[3](feats[3])
    outs = [layer[3](mask_invalid(last, padded_hw, STRIDES[3]))]
    for k in (2, 1, 0):
      last = inner[k](feats[k]) + upsample_nearest2x(last)
      outs.insert(0, layer[k](mask_invalid(last, padded_hw, STRIDES[k])))
    outs.append(outs[-1][:, ::2, ::2, :])
    return tuple(outs)
