"""Random full-size R-50 RAP weights with sane activations, drawn with NumPy only.

Used by `test_full_width_parity.py` and, unchanged, by the script that ran the ORIGINAL code to make
`tests/data/full_width_r50_rap.npz`: both sides draw the same float32 tensors from this module, so
no checkpoint is stored. Plain NumPy (no rap_jax, no torch) so that the original's virtual
environment can import it too.

Why not the original's constructor init (`shared/tools/original/time_original.py`): that recipe
scales the RPN objectness weights for the 32-channel fixture model (std 0.5). At 256 channels the
P3 logits reach 21 and the top 1000 P3 anchors of the astronaut photo hold only 6 distinct float32
sigmoid values, so which proposals survive is decided by the tie order of torch.topk / sort, not
by the model (see the test's docstring). Here every layer is scaled by its fan-in so that the RPN
logits stay in the sigmoid's linear range (below 1.8 on both photos: 999 distinct objectness values
among the 1000 proposals) and the detection scores spread from the threshold up to 0.9 (astronaut:
100 detections of 7 classes, 47 >= 0.6; coffee: 100 of 8 classes, all < 0.25).

Draw order: the keys in the order given (the original's `state_dict()` order, i.e. the manifest's),
one `numpy.random.default_rng(SEED)` stream; float64 draws cast to float32.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

SEED = 20240616

# Scales (tuned on the two fixture photos at test size 800/1333, see the test's docstring).
STEM_SCALE = 1.0 / 40.0      # input is 0-255 minus the mean: keep the stem output O(1)
RESIDUAL_GAIN = 0.5          # last conv of each bottleneck: slow the residual growth
RPN_CLS_STD = 0.15           # x sqrt(1/fan_in): objectness logits below 1.8
RPN_CLS_BIAS = -1.0
RPN_BOX_STD = 0.1            # x sqrt(1/fan_in)
FC6_BIAS = 0.0
FC7_BIAS = -30.0             # sparse fc7 (5% active): ROI-specific class scores
CLS_SCORE_STD = 1.5          # x sqrt(1/fan_in), rows shifted to zero mean
BG_BIAS = 13.0               # background logit bias
BOX_PRED_STD = 0.05          # x sqrt(1/fan_in)
MASK_LOGIT_BIAS = 0.7
RELATION_STD = 1.0           # x sqrt(1/fan_in), zero-mean row
SEMANTIC_STD = 2.0           # x sqrt(1/fan_in), rows shifted to zero mean


def _fan_in(key: str, shape: tuple[int, ...]) -> int:
  if "conv5_mask" in key:  # ConvTranspose2d(in, out, 2, stride 2): one tap per input channel
    return shape[0]
  return int(np.prod(shape[1:]))


def state_dict(shapes: Iterable[tuple[str, Iterable[int]]]) -> dict[str, np.ndarray]:
  """key -> float32 array for every (key, shape) except the anchor buffers (`cell_anchors`),
  which the caller takes from its own anchor generator."""
  shapes = [(k, tuple(int(v) for v in s)) for k, s in shapes]
  keys = {k for k, _ in shapes}
  rng = np.random.default_rng(SEED)
  normal = lambda shape, std: rng.normal(0.0, std, shape)
  uniform = lambda shape, a, b: rng.uniform(a, b, shape)
  out = {}
  for key, shape in shapes:
    if "cell_anchors" in key:
      continue
    prefix, leaf = key.rsplit(".", 1)
    frozen_bn = prefix + ".running_mean" in keys
    group_norm = key.startswith("semantic_head.semantic_seq") and len(shape) == 1 and (
        prefix + ".weight" in keys and prefix.rsplit(".", 1)[1] not in ("0", "4", "8", "12"))
    if frozen_bn or group_norm:
      a = {"weight": lambda: uniform(shape, 0.8, 1.2), "bias": lambda: normal(shape, 0.1),
           "running_mean": lambda: normal(shape, 0.05),
           "running_var": lambda: uniform(shape, 0.8, 1.25)}[leaf]()
    elif leaf == "bias":
      a = _bias(key, shape, normal)
    else:
      a = _weight(key, shape, normal)
    out[key] = np.asarray(a, np.float32)
  return out


def _weight(key: str, shape, normal) -> np.ndarray:
  unit = np.sqrt(1.0 / _fan_in(key, shape))
  he = np.sqrt(2.0) * unit
  if key == "backbone.body.stem.conv1.weight":
    return normal(shape, he * STEM_SCALE)
  if key.startswith("backbone.body."):
    last = key.endswith("conv3.weight") or key.endswith("downsample.0.weight")
    return normal(shape, he * (RESIDUAL_GAIN if last else 1.0))
  if key.startswith("backbone.fpn."):
    return normal(shape, unit)
  if key == "rpn.head.cls_logits.weight":
    return normal(shape, unit * RPN_CLS_STD)
  if key == "rpn.head.bbox_pred.weight":
    return normal(shape, unit * RPN_BOX_STD)
  if key == "roi_heads.box.predictor.cls_score.weight":
    w = normal(shape, unit * CLS_SCORE_STD)
    return w - w.mean(axis=1, keepdims=True)
  if key == "roi_heads.box.predictor.bbox_pred.weight":
    return normal(shape, unit * BOX_PRED_STD)
  if key == "roi_heads.mask.predictor.mask_fcn_logits.weight":
    return normal(shape, unit)
  if key == "roi_heads.relation.predictor.relation_val.weight":
    w = normal(shape, unit * RELATION_STD)
    return w - w.mean()
  if key == "semantic_head.semantic_final.0.weight":
    w = normal(shape, unit * SEMANTIC_STD)
    return w - w.reshape(shape[0], -1).mean(axis=1).reshape((-1,) + (1,) * (len(shape) - 1))
  return normal(shape, he)  # every other conv / fc feeds a ReLU


def _bias(key: str, shape, normal) -> np.ndarray:
  if key == "rpn.head.cls_logits.bias":
    return np.full(shape, RPN_CLS_BIAS)
  if key == "roi_heads.box.feature_extractor.fc6.bias":
    return np.full(shape, FC6_BIAS)
  if key == "roi_heads.box.feature_extractor.fc7.bias":
    return np.full(shape, FC7_BIAS)
  if key == "roi_heads.box.predictor.cls_score.bias":
    b = np.zeros(shape)
    b[0] = BG_BIAS
    return b
  if key == "roi_heads.mask.predictor.mask_fcn_logits.bias":
    return np.full(shape, MASK_LOGIT_BIAS)
  if key == "semantic_head.semantic_final.0.bias":
    return normal(shape, 0.1)
  return np.zeros(shape)
