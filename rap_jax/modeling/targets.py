"""Training targets of every head, one image at a time (vmap them), static shapes (SPEC §6.1).

Everything here is label bookkeeping, free of parameters and of gradients:

* RPN (SPEC §2.4, `rpn/loss.py`): anchors of the image's padded block, visibility w.r.t. the
  resized image (STRADDLE_THRESH 0), Matcher(0.7, 0.3, low-quality matches) -> labels 1/0/-1.
* ROI heads (`box_head/loss.py`): proposals (+ GT appended), Matcher(0.5, 0.5) -> class label
  or 0 (background), -1 for empty proposal slots.
* Mask (`mask_head/loss.py`): 28x28 targets of the positive ROIs. The original crops the GT
  POLYGONS to the ROI and rasterises them at 28x28 with pycocotools; our batches carry BITMAPS,
  so the target is the bitmap bilinearly sampled at the centre of each of the 28x28 cells of the
  same cropped box and thresholded at 0.5 (see `mask_targets`). On the training fixture (87 ROIs,
  GT polygons rasterised into bitmaps at the resized size) 99.57% of the 68,208 target pixels
  equal the original's (2x2 sub-samples averaged: 99.18%, biased to 1 by ties at exactly 0.5),
  tests/test_train_losses.py.
* RAP relation pairs (SPEC §2.9, `relation_head/loss.py`) and OCFusion candidate samples
  (SPEC §2.11, `relation_head/ocfusion_head.py`) over the positive ROIs.

Conventions: boxes are xyxy pixels of the resized image with the "+1" width convention; GT
slots carry `gt_valid`; a relation matrix `relations[i, j]` says GT slot i is in front of j.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from rap_jax.modeling.layers import valid_hw
from rap_jax.ops import boxes as box_ops
from rap_jax.ops import matcher


# ------------------------------------------------------------------------------------------ RPN


def anchor_in_block(grid_hws: Sequence[tuple[int, int]], strides: Sequence[int],
                    num_anchors: int, padded_hw: jnp.ndarray) -> jnp.ndarray:
  """[A] bool: anchors whose grid position lies in the image's valid feature block.

  Args:
    grid_hws: per level static canvas feature size (h_l, w_l).
    strides: per level stride.
    num_anchors: anchors per position (3).
    padded_hw: [2] int32 the image's padded size (its valid block of the canvas).
  Returns:
    [sum_l h_l * w_l * A] bool in the (level, y, x, a) anchor order.
  Anchors beyond the block do not exist when the original runs the image alone (SPEC §2.4).
  """
  out = []
  for (h, w), s in zip(grid_hws, strides):
    vhw = valid_hw(padded_hw, s)
    pos = (jnp.arange(h)[:, None] < vhw[0]) & (jnp.arange(w)[None, :] < vhw[1])  # [h, w]
    out.append(jnp.repeat(pos.reshape(-1), num_anchors))
  return jnp.concatenate(out)


def anchor_visibility(anchors: jnp.ndarray, resized_hw: jnp.ndarray,
                      straddle_thresh: float = 0) -> jnp.ndarray:
  """[A] bool: `x1 >= -t, y1 >= -t, x2 < w' + t, y2 < h' + t` (t = STRADDLE_THRESH, float32)."""
  t = jnp.float32(straddle_thresh)
  h = resized_hw[0].astype(jnp.float32)
  w = resized_hw[1].astype(jnp.float32)
  return ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) &
          (anchors[:, 2] < w + t) & (anchors[:, 3] < h + t))


def rpn_labels(anchors: jnp.ndarray, anchor_valid: jnp.ndarray, visible: jnp.ndarray,
               gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, fg_iou_threshold: float,
               bg_iou_threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Matched GT and label of every anchor (`RPNLossComputation.prepare_targets`).

  Args:
    anchors: [A, 4]; anchor_valid: [A] bool (exists for this image); visible: [A] bool.
    gt_boxes: [M, 4]; gt_valid: [M] bool.
    fg_iou_threshold, bg_iou_threshold: 0.7, 0.3.
  Returns:
    matched [A] int32 (GT index, -1 below 0.3, -2 between), labels [A] int32: 1 positive,
    0 negative, -1 ignored (between thresholds, not visible, or not an anchor of this image).
  """
  iou = box_ops.pairwise_iou(gt_boxes, anchors)  # [M, A]
  matched = matcher.match(iou, fg_iou_threshold, bg_iou_threshold, True, gt_valid, anchor_valid)
  labels = jnp.where(matched >= 0, 1, jnp.where(matched == matcher.BELOW_LOW_THRESHOLD, 0, -1))
  labels = jnp.where(visible & anchor_valid, labels, -1)
  return matched, labels.astype(jnp.int32)


# ------------------------------------------------------------------------------------ ROI heads


def roi_labels(proposals: jnp.ndarray, proposals_valid: jnp.ndarray, gt_boxes: jnp.ndarray,
               gt_labels: jnp.ndarray, gt_valid: jnp.ndarray, fg_iou_threshold: float,
               bg_iou_threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Matched GT and class target of every proposal (`FastRCNNLossComputation.prepare_targets`).

  Args:
    proposals: [R, 4] (RPN proposals with the GT appended); proposals_valid: [R] bool.
    gt_boxes: [M, 4]; gt_labels: [M] int32 (1..80); gt_valid: [M] bool.
    fg_iou_threshold, bg_iou_threshold: 0.5, 0.5 (no low-quality matches).
  Returns:
    matched [R] int32 (GT index or -1 / -2), labels [R] int32: GT class, 0 background,
    -1 ignored (between thresholds) or empty slot.
  """
  iou = box_ops.pairwise_iou(gt_boxes, proposals)  # [M, R]
  matched = matcher.match(iou, fg_iou_threshold, bg_iou_threshold, False, gt_valid,
                          proposals_valid)
  labels = gt_labels[jnp.maximum(matched, 0)]
  labels = jnp.where(matched == matcher.BELOW_LOW_THRESHOLD, 0, labels)
  labels = jnp.where(matched == matcher.BETWEEN_THRESHOLDS, -1, labels)
  labels = jnp.where(proposals_valid, labels, -1)
  return matched, labels.astype(jnp.int32)


# ----------------------------------------------------------------------------------------- mask


def mask_crop_boxes(boxes: jnp.ndarray, resized_hw: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
  """The box `PolygonInstance.crop` uses (no "+1"): x1' = clamp(x1, 0, W-1),
  x2' = max(clamp(x2, 0, W), x1' + 1), w' = x2' - x1' (y likewise); W, H = the resized size.

  boxes: [P, 4] -> (x1', y1', w', h') each [P] float32.
  """
  h = resized_hw[0].astype(jnp.float32)
  w = resized_hw[1].astype(jnp.float32)
  x1 = jnp.clip(boxes[:, 0], 0.0, w - 1.0)
  y1 = jnp.clip(boxes[:, 1], 0.0, h - 1.0)
  x2 = jnp.maximum(jnp.clip(boxes[:, 2], 0.0, w), x1 + 1.0)
  y2 = jnp.maximum(jnp.clip(boxes[:, 3], 0.0, h), y1 + 1.0)
  return x1, y1, x2 - x1, y2 - y1


def _cell_samples(start: jnp.ndarray, length: jnp.ndarray, resolution: int,
                  sampling_ratio: int) -> jnp.ndarray:
  """[P] start/length -> [P, resolution * g] image coordinates of the sub-cell centres."""
  g = sampling_ratio
  u = (jnp.arange(resolution, dtype=jnp.float32)[:, None] +
       (jnp.arange(g, dtype=jnp.float32)[None, :] + 0.5) / g).reshape(-1)  # [R*g]
  return start[:, None] + u[None, :] * (length / resolution)[:, None]


def _axis_taps(coord: jnp.ndarray, size: jnp.ndarray):
  """Bilinear taps of bitmap index coordinates, clamped to [0, size-1] (edge replicated)."""
  c = jnp.clip(coord, 0.0, jnp.maximum(size - 1, 0).astype(jnp.float32))
  lo = jnp.floor(c).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(size - 1, 0))
  frac = c - lo.astype(jnp.float32)
  return lo, hi, frac


def mask_targets(masks: jnp.ndarray, gt_index: jnp.ndarray, boxes: jnp.ndarray,
                 resized_hw: jnp.ndarray, resolution: int = 28, sampling_ratio: int = 1,
                 packed: bool = False) -> jnp.ndarray:
  """28x28 mask targets of ROIs from GT bitmaps (our stand-in for polygon rasterisation).

  The original maps a GT polygon into the ROI's cell grid (crop box of `mask_crop_boxes`, scale
  28/w') and rasterises it with pycocotools, i.e. cell (v, u) is inside iff the polygon covers
  about its centre, image point (x1' + (u + .5) w'/28, y1' + (v + .5) h'/28). Here the GT bitmap
  (pixel p covers [p, p+1), so image point X is bitmap index X - 0.5) is sampled bilinearly at
  `sampling_ratio`^2 points per cell (ROIAlign-style sub-cell centres, half-pixel aligned,
  coordinates clamped to the resized image; default 1 = the cell centre), averaged, and
  thresholded: target = mean >= 0.5.

  Args:
    masks: [M, Hc, Wc] uint8 0/1 GT bitmaps of the image (or [M, Hc, Wc / 8] bit-packed, first
      pixel in the high bit, with packed=True).
    gt_index: [P] int32 GT slot of each ROI (clamped to [0, M)).
    boxes: [P, 4] ROIs, xyxy resized pixels.
    resized_hw: [2] int32 (h', w'), the extent of the bitmaps.
    resolution: 28.
    sampling_ratio: samples per cell per axis (1: the cell centre).
    packed: bit-packed masks.
  Returns:
    [P, resolution, resolution] float32 0/1.
  """
  m = masks.shape[0]
  g = sampling_ratio
  gi = jnp.clip(gt_index, 0, m - 1)
  x1, y1, w, h = mask_crop_boxes(boxes, resized_hw)
  ys = _cell_samples(y1, h, resolution, g) - 0.5  # [P, R*g] bitmap row coordinates
  xs = _cell_samples(x1, w, resolution, g) - 0.5
  y0, y1_, ly = _axis_taps(ys, resized_hw[0])
  x0, x1_, lx = _axis_taps(xs, resized_hw[1])

  def tap(yi, xi):  # [P, R*g] x [P, R*g] -> [P, R*g, R*g] float32
    gidx = gi[:, None, None]
    yy = yi[:, :, None]
    xx = xi[:, None, :]
    if packed:
      byte = masks[gidx, yy, xx >> 3].astype(jnp.int32)
      return ((byte >> (7 - (xx & 7))) & 1).astype(jnp.float32)
    return masks[gidx, yy, xx].astype(jnp.float32)

  wy1 = ly[:, :, None]
  wy0 = 1.0 - wy1
  wx1 = lx[:, None, :]
  wx0 = 1.0 - wx1
  val = (wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1_)) +
         wy1 * (wx0 * tap(y1_, x0) + wx1 * tap(y1_, x1_)))  # [P, R*g, R*g]
  p = boxes.shape[0]
  val = val.reshape(p, resolution, g, resolution, g).mean(axis=(2, 4))
  return (val >= 0.5).astype(jnp.float32)


# ---------------------------------------------------------------------------- relation heads


def relation_pairs(gt_index: jnp.ndarray, valid: jnp.ndarray,
                   relations: jnp.ndarray) -> jnp.ndarray:
  """RAP ranking pairs over the positive ROIs of one image (SPEC §2.9).

  For every i <= j (i == j included) of valid positives with GT slots (a, b): +1 if a is in
  front of b (loss on z_i - z_j), else -1 if b is in front of a (loss on z_j - z_i), else 0.

  Args:
    gt_index: [P] int32 matched GT slot of each positive ROI; valid: [P] bool.
    relations: [M, M] bool, relations[a, b] = a in front of b.
  Returns:
    [P, P] int32 in {-1, 0, 1}, zero below the diagonal and on invalid rows/columns.
  """
  p = gt_index.shape[0]
  a = jnp.clip(gt_index, 0, relations.shape[0] - 1)
  ab = relations[a[:, None], a[None, :]]  # [P, P]
  ba = relations[a[None, :], a[:, None]]
  upper = jnp.arange(p)[:, None] <= jnp.arange(p)[None, :]
  ok = valid[:, None] & valid[None, :] & upper
  sign = jnp.where(ab, 1, jnp.where(ba, -1, 0))
  return jnp.where(ok, sign, 0).astype(jnp.int32)


def occlusion_candidates(gt_index: jnp.ndarray, valid: jnp.ndarray,
                         relations: jnp.ndarray) -> jnp.ndarray:
  """OCFusion candidate pairs (SPEC §2.11): [P, P] bool, ROI p's instance in front of ROI q's.

  Each True (p, q) stands for the original's two samples (p, q, target 1) and (q, p, target 0);
  the flat sample space is [P, P, 2] (kind 0 / kind 1), see `occlusion_samples`.
  """
  a = jnp.clip(gt_index, 0, relations.shape[0] - 1)
  front = relations[a[:, None], a[None, :]]
  return front & valid[:, None] & valid[None, :]


def occlusion_samples(flat_index: jnp.ndarray, num_positives: int
                      ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Decode flat sample indices f = (p * P + q) * 2 + kind into head inputs.

  Args:
    flat_index: [K] int32 (-1 = empty slot).
    num_positives: P (static).
  Returns:
    first [K], second [K] int32 positive indices (the head gets concat(feat[first],
    feat[second])), target [K] float32 (1: first occludes second), valid [K] bool.
    kind 0 = (p, q, 1), kind 1 = (q, p, 0).
  """
  valid = flat_index >= 0
  f = jnp.maximum(flat_index, 0)
  p = f // (2 * num_positives)
  q = (f // 2) % num_positives
  kind = f % 2
  first = jnp.where(kind == 0, p, q)
  second = jnp.where(kind == 0, q, p)
  return first, second, (kind == 0).astype(jnp.float32), valid
