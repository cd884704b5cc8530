"""Box head: feature extractor, FPN predictor and test-time post-processing (SPEC §2.6).

Feature extractors (`ROI_BOX_HEAD.FEATURE_EXTRACTOR`, our `extractor`): `FPN2MLPFeatureExtractor`
(every original config; with `USE_GN` fc6/fc7 become `fc6.0` Linear without bias + `fc6.1`
GroupNorm) and `FPNXconv1fcFeatureExtractor` (`xconvs`: NUM_STACKED_CONVS 3x3 convs of
CONV_HEAD_DIM, each + GroupNorm when `USE_GN` + ReLU, then `fc6` + ReLU). GroupNorm here is per
ROI (ordinary GroupNorm of `MODEL.GROUP_NORM`).

Post-processing per image: softmax; decode all classes from the proposal (weights 10,10,5,5);
clip; candidates `prob > score_thresh`; class-wise NMS in proposal order; concatenate classes
(class-major, proposal order inside a class); keep scores >= the `detections_per_img`-th largest
(ties kept). The detection order is the original's, used by the relation heads and OCFusion ids.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_jax.modeling.layers import (KAIMING_UNIFORM_A1, NORMAL_001, GroupNormSpec, conv,
                                     flatten_hwc)
from rap_jax.ops import boxes as box_ops
from rap_jax.ops.box_coder import decode_boxes
from rap_jax.ops.nms import greedy_fixed_point, nms_mask
from rap_jax.ops.poolers import pool_rois


EXTRACTORS = ("FPN2MLPFeatureExtractor", "FPNXconv1fcFeatureExtractor")


class FCGroupNorm(nn.Module):
  """`make_fc(use_gn=True)`: `0` Linear (no bias, kaiming_uniform a=1), `1` GroupNorm."""
  features: int
  group_norm: GroupNormSpec

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, use_bias=False, kernel_init=KAIMING_UNIFORM_A1, name="0")(x)
    return self.group_norm.layer(self.features, "1")(x)


class BoxFeatureExtractor(nn.Module):
  """`FPN2MLPFeatureExtractor`: pool 7x7 -> flatten -> fc6 + ReLU -> fc7 + ReLU."""
  mlp_head_dim: int
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, pooled):
    x = flatten_hwc(pooled)
    for name in ("fc6", "fc7"):
      fc = (FCGroupNorm(self.mlp_head_dim, self.group_norm, name=name) if self.use_gn
            else nn.Dense(self.mlp_head_dim, name=name))
      x = nn.relu(fc(x))
    return x


class BoxXconvFeatureExtractor(nn.Module):
  """`FPNXconv1fcFeatureExtractor`: pooled [K, 7, 7, C] -> `xconvs` -> flatten -> fc6 + ReLU.

  `xconvs` is the original's Sequential: per conv [conv, GN, ReLU] with `use_gn` (children 3i,
  3i+1) or [conv, ReLU] without (children 2i); convs N(0, 0.01) (bias 0, none with GN); fc6
  kaiming_uniform(a=1), bias 0.
  """
  mlp_head_dim: int
  num_stacked_convs: int = 4
  conv_head_dim: int = 256
  use_gn: bool = False
  group_norm: GroupNormSpec = GroupNormSpec()

  @nn.compact
  def __call__(self, pooled):
    x = XConvs(self.num_stacked_convs, self.conv_head_dim, self.use_gn, self.group_norm,
               name="xconvs")(pooled)
    x = flatten_hwc(x)
    return nn.relu(nn.Dense(self.mlp_head_dim, kernel_init=KAIMING_UNIFORM_A1, name="fc6")(x))


class XConvs(nn.Module):
  """The `xconvs` Sequential of `BoxXconvFeatureExtractor` on [K, h, w, C] (GN per ROI)."""
  num_stacked_convs: int
  conv_head_dim: int
  use_gn: bool
  group_norm: GroupNormSpec

  @nn.compact
  def __call__(self, x):
    step = 3 if self.use_gn else 2
    for i in range(self.num_stacked_convs):
      x = conv(self.conv_head_dim, 3, bias=not self.use_gn, name=str(step * i),
               kernel_init=NORMAL_001)(x)
      if self.use_gn:
        x = self.group_norm.layer(self.conv_head_dim, str(step * i + 1))(x)
      x = nn.relu(x)
    return x


class BoxPredictor(nn.Module):
  """`FPNPredictor`: `cls_score` (num_classes), `bbox_pred` (4 * num_classes)."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return (nn.Dense(self.num_classes, name="cls_score")(x),
            nn.Dense(4 * self.num_classes, name="bbox_pred")(x))


class BoxHead(nn.Module):
  """Fields = `config.model.roi_heads.box`."""
  in_channels: int = 256
  pooler_resolution: int = 7
  pooler_scales: Sequence[float] = (0.25, 0.125, 0.0625, 0.03125)
  pooler_sampling_ratio: int = 2
  mlp_head_dim: int = 1024
  num_classes: int = 81
  bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
  score_thresh: float = 0.05
  nms_thresh: float = 0.5
  detections_per_img: int = 100
  max_detections: int = 104
  fg_iou_threshold: float = 0.5
  bg_iou_threshold: float = 0.5
  batch_size_per_image: int = 512
  positive_fraction: float = 0.25
  max_nms_candidates: int = 2048
  extractor: str = "FPN2MLPFeatureExtractor"  # ROI_BOX_HEAD.FEATURE_EXTRACTOR (EXTRACTORS)
  use_gn: bool = False                        # ROI_BOX_HEAD.USE_GN
  num_stacked_convs: int = 4                  # ROI_BOX_HEAD.NUM_STACKED_CONVS (Xconv1fc only)
  conv_head_dim: int = 256                    # ROI_BOX_HEAD.CONV_HEAD_DIM (Xconv1fc only)
  group_norm: GroupNormSpec = GroupNormSpec()  # MODEL.GROUP_NORM
  nms_strict: bool = True

  def setup(self):
    if self.extractor == "FPN2MLPFeatureExtractor":
      self.feature_extractor = BoxFeatureExtractor(self.mlp_head_dim, self.use_gn,
                                                   self.group_norm)
    elif self.extractor == "FPNXconv1fcFeatureExtractor":
      self.feature_extractor = BoxXconvFeatureExtractor(
          self.mlp_head_dim, self.num_stacked_convs, self.conv_head_dim, self.use_gn,
          self.group_norm)
    else:
      raise ValueError(f"roi_heads.box.extractor must be one of {EXTRACTORS}, "
                       f"got {self.extractor!r}")
    self.predictor = BoxPredictor(self.num_classes)

  def __call__(self, features, rois, feature_hws):
    """features: per level [N, h, w, C]; rois [N, R, 4]; feature_hws: per level [N, 2].

    Returns (fc7 features [N, R, D], class_logits [N, R, classes], box_regression [N, R, 4*classes]).
    """
    pooled = jax.vmap(
        lambda f, b, hw: pool_rois(f, b, self.pooler_scales, self.pooler_resolution,
                                   self.pooler_sampling_ratio, hw),
    )(list(features[:len(self.pooler_scales)]), rois, list(feature_hws[:len(self.pooler_scales)]))
    n, r = rois.shape[:2]
    x = self.feature_extractor(pooled.reshape((n * r,) + pooled.shape[2:]))
    logits, regression = self.predictor(x)
    return (x.reshape(n, r, -1), logits.reshape(n, r, -1), regression.reshape(n, r, -1))

  def postprocess(self, class_logits, box_regression, proposals, proposals_valid, resized_hw):
    """Batched detections, see `detections_for_image`.

    The NMS path is chosen for the whole batch (a per-image `cond` under vmap would run both):
    the candidates-only path when every image has at most `max_nms_candidates` candidates, else
    the class-wise path. Both give the same detections.
    """
    def run(path):
      fn = lambda lg, rg, p, v, hw: detections_for_image(
          lg, rg, p, v, hw, self.bbox_reg_weights, self.score_thresh, self.nms_thresh,
          self.detections_per_img, self.max_detections, self.nms_strict,
          self.max_nms_candidates, path)
      return lambda: jax.vmap(fn)(class_logits, box_regression, proposals, proposals_valid,
                                  resized_hw)

    num_flat = class_logits.shape[1] * (class_logits.shape[2] - 1)
    if self.max_nms_candidates >= num_flat:
      return run("candidates")()
    prob = jax.nn.softmax(class_logits, axis=-1)[..., 1:]
    counts = jnp.sum((prob > jnp.float32(self.score_thresh)) & proposals_valid[..., None],
                     axis=(1, 2))
    return jax.lax.cond(jnp.all(counts <= self.max_nms_candidates), run("candidates"),
                        run("classwise"))


def detections_for_image(class_logits, box_regression, proposals, proposals_valid, resized_hw,
                         weights, score_thresh, nms_thresh, detections_per_img, max_detections,
                         nms_strict=True, max_nms_candidates=2048, nms_path="classwise"):
  """One image's detections in the original's order.

  Args:
    class_logits: [R, C]; box_regression: [R, 4C]; proposals: [R, 4]; proposals_valid: [R].
    resized_hw: [2] int32 (h', w').
    nms_path: 'classwise' (one NMS per class over all proposals, the original's loop) or
      'candidates' (one class-aware NMS over the top `max_nms_candidates` candidates: the same
      result whenever the image has no more candidates than that).
  Returns:
    dict of `boxes` [D, 4] (resized-image pixels), `scores` [D], `labels` [D] int32
    (contiguous 1..C-1), `valid` [D] bool, `num` scalar; D = max_detections.
  """
  r, c = class_logits.shape
  prob = jax.nn.softmax(class_logits, axis=-1)
  boxes = decode_boxes(box_regression, proposals, weights).reshape(r, c, 4)
  boxes = box_ops.clip_boxes(boxes, resized_hw[0], resized_hw[1])
  cand = (prob > jnp.float32(score_thresh)) & proposals_valid[:, None]  # [R, C]
  # Class-wise NMS for classes 1..C-1, each over all R proposals in proposal order.
  cls_boxes = jnp.transpose(boxes[:, 1:], (1, 0, 2))  # [C-1, R, 4]
  cls_scores = prob[:, 1:].T  # [C-1, R]
  cls_cand = cand[:, 1:].T
  flat_cand = cls_cand.reshape(-1)  # class-major, then proposal order

  def classwise():  # one NMS per class over all R proposals (the original's loop)
    return jax.vmap(lambda b, s, v: nms_mask(b, s, v, nms_thresh, nms_strict))(
        cls_boxes, cls_scores, cls_cand).reshape(-1)

  def candidates_only():
    # Exact whenever the candidates fit in T slots: take them in descending score (ties in
    # class-major, proposal order: the per-class sort order), suppress only within a class.
    t = min(max_nms_candidates, flat_cand.shape[0])
    top, idx = jax.lax.top_k(jnp.where(flat_cand, cls_scores.reshape(-1), -jnp.inf), t)
    ok = top > -jnp.inf
    b = cls_boxes.reshape(-1, 4)[idx]
    cls = idx // r
    iou = box_ops.pairwise_iou(b, b)
    over = (iou > jnp.float32(nms_thresh)) if nms_strict else (iou >= jnp.float32(nms_thresh))
    later = jnp.arange(t)[None, :] > jnp.arange(t)[:, None]
    over = over & later & (cls[:, None] == cls[None, :])
    keep_sorted = greedy_fixed_point(over, ok)
    return jnp.zeros(flat_cand.shape, bool).at[idx].set(keep_sorted & ok)

  if nms_path not in ("classwise", "candidates"):
    raise ValueError(f"nms_path must be 'classwise' or 'candidates', got {nms_path!r}")
  flat_keep = candidates_only() if nms_path == "candidates" else classwise()
  flat_scores = cls_scores.reshape(-1)
  total = jnp.sum(flat_keep)
  # kthvalue rule: if more than detections_per_img, keep score >= the k-th largest (ties kept).
  k = min(detections_per_img, flat_keep.shape[0])
  kth = jax.lax.top_k(jnp.where(flat_keep, flat_scores, -jnp.inf), k)[0][k - 1]
  final = flat_keep & ((total <= detections_per_img) | (flat_scores >= kth))
  num = jnp.sum(final)
  (idx,) = jnp.nonzero(final, size=max_detections, fill_value=0)
  valid = jnp.arange(max_detections) < num
  label = (idx // r + 1).astype(jnp.int32)
  prop = idx % r
  det_boxes = cls_boxes.reshape(-1, 4)[idx]
  return dict(boxes=jnp.where(valid[:, None], det_boxes, 0.0),
              scores=jnp.where(valid, flat_scores[idx], 0.0),
              labels=jnp.where(valid, label, 0),
              proposal_index=jnp.where(valid, prop, -1),
              valid=valid, num=num)
