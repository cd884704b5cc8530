"""Per-kind conversion hooks: PyTorch layer tensors -> Flax leaves (SPEC §2.12 "Conversion rules").

This is the only place where layouts change; inside the model everything is NHWC.

| kind               | coll.   | torch leaf -> our leaf     | layout of `weight`                     |
| ------------------ | ------- | -------------------------- | -------------------------------------- |
| conv               | params  | weight->kernel, bias->bias | (O, I/g, kh, kw) -> (kh, kw, I/g, O)   |
| linear             | params  | weight->kernel, bias->bias | (out, in) -> (in, out)                 |
| linear_chw         | params  | weight->kernel, bias->bias | in axis (C,H,W) -> (H,W,C); (in, out)  |
| linear_no_bias     | params  | weight->kernel             | (out, in) -> (in, out)                 |
| linear_chw_no_bias | params  | weight->kernel             | as linear_chw                          |
| conv_transpose     | params  | weight->kernel, bias->bias | (in, out, kh, kw) -> (kh, kw, in, out) |
| group_norm         | params  | weight->scale, bias->bias  | unchanged (1-d)                        |
| frozen_bn          | buffers | weight, bias, running_*    | unchanged (1-d), kept verbatim         |

FrozenBatchNorm2d is NOT folded here: its four buffers are stored verbatim in the 'buffers'
collection and the model computes `scale = weight * rsqrt(running_var)` (no epsilon) and
`shift = bias - running_mean * scale` in float32 at run time, exactly as the original (SPEC §2.2).
Keeping them lets the converted tree be compared value by value with the `.pth` and keeps the
original's rounding.

`linear_chw` is for the three Linear layers whose input is a flattened NCHW ROI map of 7x7
(`fc6`, `relation_fc1`, `relation_oc_fc1`; box pooler 7x7, relation convs end with stride 2 on
14x14): our model flattens NHWC maps, so the weight's input axis is permuted from (C, H, W) to
(H, W, C) order before the transpose.

The `*_no_bias` kinds are `make_fc(use_gn=True)`'s Linear (`fc6.0`, `fc7.0`, followed by a
GroupNorm): a bias there is a leftover, not silently dropped.

`conv_transpose` (`conv5_mask`, kernel 2 stride 2): the model computes
`out[2y+a, 2x+b, o] = bias[o] + sum_i x[y, x, i] * kernel[a, b, i, o]` (SPEC §2.7), so no flip.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

# Spatial size of the flattened ROI maps feeding `linear_chw` layers (SPEC §2.6, §2.9, §2.11).
ROI_MAP_HW = 7


class HookError(ValueError):
  """A tensor does not have the shape its layer kind requires."""


def conv_oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  """[O, I/g, kh, kw] -> [kh, kw, I/g, O] (also grouped, DCN and offset convs)."""
  _require_ndim(w, 4)
  return w.transpose(2, 3, 1, 0)


def linear_to_in_out(w: np.ndarray) -> np.ndarray:
  """[out, in] -> [in, out]."""
  _require_ndim(w, 2)
  return w.T


def linear_chw_to_hwc(w: np.ndarray) -> np.ndarray:
  """[out, C*7*7] (input in C,H,W order) -> [7*7*C, out] (input in H,W,C order)."""
  _require_ndim(w, 2)
  out, fan_in = w.shape
  hw = ROI_MAP_HW * ROI_MAP_HW
  if fan_in % hw:
    raise HookError(f"input size {fan_in} is not a multiple of {ROI_MAP_HW}x{ROI_MAP_HW}")
  c = fan_in // hw
  return w.reshape(out, c, ROI_MAP_HW, ROI_MAP_HW).transpose(0, 2, 3, 1).reshape(out, fan_in).T


def conv_transpose_to_hwio(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out], no spatial flip."""
  _require_ndim(w, 4)
  return w.transpose(2, 3, 0, 1)


def unchanged_1d(w: np.ndarray) -> np.ndarray:
  """1-d vectors (biases, norm parameters, FrozenBN buffers) keep their layout."""
  _require_ndim(w, 1)
  return w


def _require_ndim(w: np.ndarray, ndim: int) -> None:
  if w.ndim != ndim:
    raise HookError(f"expected a {ndim}-d tensor, got shape {tuple(w.shape)}")


@dataclasses.dataclass(frozen=True)
class Hook:
  """How the tensors of one kind of layer become leaves of our variables."""
  collection: str                                   # 'params' | 'buffers'
  leaves: Mapping[str, str]                         # torch leaf name -> our leaf name
  weight_layout: Callable[[np.ndarray], np.ndarray]  # applied to `weight`; other leaves are 1-d
  required: tuple[str, ...]                         # torch leaves every such layer must have

  def apply(self, leaf: str, tensor: np.ndarray) -> tuple[str, np.ndarray]:
    """(torch leaf, tensor) -> (our leaf, tensor in our layout); KeyError for unknown leaves."""
    ours = self.leaves[leaf]
    layout = self.weight_layout if leaf == "weight" else unchanged_1d
    return ours, layout(tensor)


_WEIGHT_BIAS = {"weight": "kernel", "bias": "bias"}
_FROZEN_BN = ("weight", "bias", "running_mean", "running_var")

HOOKS: Mapping[str, Hook] = {
    "conv": Hook("params", _WEIGHT_BIAS, conv_oihw_to_hwio, ("weight",)),
    "linear": Hook("params", _WEIGHT_BIAS, linear_to_in_out, ("weight", "bias")),
    "linear_chw": Hook("params", _WEIGHT_BIAS, linear_chw_to_hwc, ("weight", "bias")),
    "linear_no_bias": Hook("params", {"weight": "kernel"}, linear_to_in_out, ("weight",)),
    "linear_chw_no_bias": Hook("params", {"weight": "kernel"}, linear_chw_to_hwc, ("weight",)),
    "conv_transpose": Hook("params", _WEIGHT_BIAS, conv_transpose_to_hwio, ("weight", "bias")),
    "group_norm": Hook("params", {"weight": "scale", "bias": "bias"}, unchanged_1d,
                       ("weight", "bias")),
    "frozen_bn": Hook("buffers", {n: n for n in _FROZEN_BN}, unchanged_1d, _FROZEN_BN),
}
# The last kind, 'anchors' (`rpn.anchor_generator.cell_anchors`), is not stored: converter.py
# checks it against rap_jax.modeling.anchors.
