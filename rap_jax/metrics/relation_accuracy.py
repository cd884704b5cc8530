"""Relation accuracy (SPEC §5.5): does the relation head order overlapping instances correctly?

The original's diagnostic (`tools/test_relation.py` -> `engine/inference_ps_relation*.py` ->
`combine_to_panoptic_for_acc` / `combine_to_panoptic_for_ocfusion_acc`), on host numpy:

1. Detections with ``score > CONFIDENCE_THR`` (strict) are matched to GT boxes with
   ``Matcher(0, 0)``: each detection takes the GT of highest IoU ("+1" box convention), even at
   IoU 0. Because of an ``idx > 0`` test, a detection matched to GT index 0 counts as unmatched
   (-1); ``fix_index_zero=True`` repairs that. Images without detections or without GT boxes are
   skipped (the original's matcher raises and the image is passed over).
2. The fusion is replayed (RAP: §5.2 checks; OCFusion: §5.3) in descending score order. For every
   intersecting (placed segment, new instance) pair whose GT instances have a relation
   ``(front_id, back_id)``, one pair is counted: "relation correct" when the predicted order
   matches (RAP: smaller relation value in front; OCFusion: the occlusion bit says the new
   instance occludes the owner), and "score correct" when the earlier (higher-score) instance is
   the GT front one.

RAP variant details kept from the original: a pair found after a large two-sided overlap has
rejected the new instance is not counted (the loop breaks), pairs seen before it are. Intersecting
segments are visited in ascending segment id; the original's ids are random colours, ours are
given in placement order (the order only matters for that break). OCFusion variant: segments are
visited by ascending detection index, and every intersecting pair is counted (the 0.2 test only
decides pixel transfer and ``num_inferred``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def box_iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of xyxy boxes with maskrcnn-benchmark's "+1" widths: a [N, 4], b [M, 4] -> [N, M]."""
  a = np.asarray(a, np.float32).reshape(-1, 4)
  b = np.asarray(b, np.float32).reshape(-1, 4)
  area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
  area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt + 1, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_instances(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_instance_ids: np.ndarray,
                    fix_index_zero: bool = False) -> np.ndarray:
  """GT instance id of each detection (-1 = unmatched), as the original's Matcher(0, 0).

  det_boxes [N, 4], gt_boxes [G, 4] xyxy in one frame; gt_instance_ids [G] (COCO annotation ids).
  Ties take the first GT (numpy argmax). Returns [N] int64.
  """
  iou = box_iou_plus_one(gt_boxes, det_boxes)  # [G, N]
  idx = np.argmax(iou, axis=0)
  ids = np.asarray(gt_instance_ids, np.int64)[idx]
  matched = idx >= 0 if fix_index_zero else idx > 0  # the original tests `idx > 0`
  return np.where(matched, ids, -1)


class RelationAccuracy:
  """Accumulates SPEC §5.5 counts over images; `result()` gives the accuracies.

  method: "rap" (relation values) or "ocfusion" (occlusion matrix). Thresholds default to the RAP
  configs (CONFIDENCE_THR 0.6, OVERLAP_THR 0.6, LARGE_OVERLAP_THR 0.5); OCFusion configs use 0.5.
  """

  def __init__(self, method: str = "rap", confidence_thr: float = 0.6, overlap_thr: float = 0.6,
               large_overlap_thr: float = 0.5, fix_index_zero: bool = False):
    if method not in ("rap", "ocfusion"):
      raise ValueError(f"method must be 'rap' or 'ocfusion', got {method!r}")
    self.method = method
    self.confidence_thr = float(confidence_thr)
    self.overlap_thr = float(overlap_thr)
    self.large_overlap_thr = float(large_overlap_thr)
    self.fix_index_zero = fix_index_zero
    self.counts = {"relation_correct": 0, "score_correct": 0, "num_pairs": 0, "num_inferred": 0,
                   "num_images": 0}

  def add(self, *, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray,
          gt_boxes: np.ndarray, gt_instance_ids: np.ndarray,
          gt_relations: Iterable[tuple[int, int]], relation_vals: np.ndarray | None = None,
          occlusion: np.ndarray | None = None) -> dict[str, int]:
    """One image; returns its counts.

    boxes [N, 4] xyxy (same frame as gt_boxes), scores [N], labels [N] (any class ids), masks
    [N, H, W] bool pasted at image size; relation_vals [N] (RAP; zeros if None) or occlusion
    [N, N] bool, entry [i, j] = detection i occludes detection j (OCFusion; zeros if None);
    gt_boxes [G, 4], gt_instance_ids [G], gt_relations: (front_id, back_id) pairs.
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    keep = np.flatnonzero(scores > self.confidence_thr)  # the inference files' strict filter
    image = {"relation_correct": 0, "score_correct": 0, "num_pairs": 0, "num_inferred": 0}
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if len(keep) == 0 or len(gt_boxes) == 0:
      return image  # the original's matcher raises: image skipped
    instance_ids = match_instances(np.asarray(boxes)[keep], gt_boxes, gt_instance_ids,
                                   self.fix_index_zero)
    masks = np.asarray(masks, bool)[keep]
    labels = np.asarray(labels)[keep]
    relations = {(int(f), int(b)) for f, b in gt_relations}
    # Python's stable sort on -score: ties keep detection order.
    order = np.argsort(-scores[keep].astype(np.float64), kind="stable")
    if self.method == "rap":
      vals = (np.zeros(len(keep), np.float32) if relation_vals is None
              else np.asarray(relation_vals, np.float32).reshape(-1)[keep])
      _replay_rap(order, masks, labels, instance_ids, vals, relations, self.overlap_thr,
                  self.large_overlap_thr, image)
    else:
      n = len(np.asarray(scores))
      occ = (np.zeros((n, n), bool) if occlusion is None
             else np.asarray(occlusion).astype(bool))[np.ix_(keep, keep)]
      _replay_ocfusion(order, masks, instance_ids, occ, relations, self.overlap_thr, image)
    for k, v in image.items():
      self.counts[k] += v
    self.counts["num_images"] += 1
    return image

  def result(self) -> dict[str, Any]:
    """{'relation_acc', 'score_acc' (None without pairs), 'num_pairs', 'num_inferred', 'num_images'}."""
    c = self.counts
    n = c["num_pairs"]
    return {"relation_acc": c["relation_correct"] / n if n else None,
            "score_acc": c["score_correct"] / n if n else None,
            "num_pairs": n, "num_inferred": c["num_inferred"], "num_images": c["num_images"]}


def _count_pair(owner_id: int, new_id: int, owner_said_front: bool, new_said_front: bool,
                relations: set, counts: dict[str, int]) -> None:
  """One intersecting (placed, new) pair: counted if the GT relates the two instances.

  owner_said_front / new_said_front: the head's verdicts (both False on a RAP tie: never correct).
  """
  if (owner_id, new_id) in relations:  # GT: the placed (higher score) instance is in front
    counts["relation_correct"] += int(owner_said_front)
    counts["score_correct"] += 1
    counts["num_pairs"] += 1
  elif (new_id, owner_id) in relations:  # GT: the new instance is in front
    counts["relation_correct"] += int(new_said_front)
    counts["num_pairs"] += 1


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _replay_rap(order, masks, labels, instance_ids, vals, relations, overlap_thr,
                large_overlap_thr, counts) -> None:
  """`combine_to_panoptic_for_acc` (SPEC §5.2 checks) with pair counting; crops to each mask."""
  h, w = masks.shape[1:]
  pan = np.zeros((h, w), np.int32)  # segment id, 1.. in placement order
  owner_label = np.zeros((h, w), np.int64)
  owner_val = np.full((h, w), np.inf, np.float32)
  seg_area, seg_instance, seg_val = [0], [0], [np.float32(0)]
  for i in order:
    area = int(masks[i].sum())
    if area == 0:
      continue
    ys, xs = _bbox(masks[i])
    mask = masks[i][ys, xs]
    pan_c, label_c, val_c = pan[ys, xs], owner_label[ys, xs], owner_val[ys, xs]
    inter = (pan_c > 0) & mask
    if int((inter & (label_c == labels[i])).sum()) / area > overlap_thr:
      continue
    valid = True
    if inter.any():
      owners, overlaps = np.unique(pan_c[inter], return_counts=True)
      for sid, ov in zip(owners.tolist(), overlaps.tolist()):
        if ov / area >= large_overlap_thr and ov / seg_area[sid] >= large_overlap_thr:
          valid = False
          break
        # smaller relation value = nearer (SPEC §2.9)
        _count_pair(seg_instance[sid], int(instance_ids[i]), bool(seg_val[sid] < vals[i]),
                    bool(vals[i] < seg_val[sid]), relations, counts)
      mask = mask & (val_c > vals[i])
      counts["num_inferred"] += int(valid)
    if int(mask.sum()) / area <= overlap_thr or not valid:
      continue
    sid = len(seg_area)
    stolen = np.bincount(pan_c[mask], minlength=sid)
    for s in np.flatnonzero(stolen[1:]) + 1:
      seg_area[s] -= int(stolen[s])
    pan_c[mask] = sid
    label_c[mask] = labels[i]
    val_c[mask] = vals[i]
    seg_area.append(int(mask.sum()))
    seg_instance.append(int(instance_ids[i]))
    seg_val.append(vals[i])


def _replay_ocfusion(order, masks, instance_ids, occ, relations, overlap_thr, counts) -> None:
  """`combine_to_panoptic_for_ocfusion_acc` (SPEC §5.3) with pair counting."""
  h, w = masks.shape[1:]
  used = np.zeros((h, w), np.int32)  # 1 + detection index of each pixel's owner
  used_area = np.zeros(len(masks) + 1, np.int64)
  for i in order:
    area = int(masks[i].sum())
    if area == 0:
      continue
    ys, xs = _bbox(masks[i])
    mask = masks[i][ys, xs]
    used_c = used[ys, xs]
    inter = (used_c > 0) & mask
    if inter.any():
      mask = (used_c == 0) & mask
      owners, ovs = np.unique(used_c[inter], return_counts=True)
      for oid, ov in zip(owners.tolist(), ovs.tolist()):
        occludes = bool(occ[i, oid - 1])  # new detection i occludes owner oid - 1
        _count_pair(int(instance_ids[oid - 1]), int(instance_ids[i]), not occludes, occludes,
                    relations, counts)
        if ov / area >= 0.2 or ov / used_area[oid] >= 0.2:
          counts["num_inferred"] += 1
          if occludes:
            mask |= (used_c == oid) & inter
      if int(mask.sum()) / area <= overlap_thr:
        continue
    stolen = np.bincount(used_c[mask], minlength=len(used_area))
    used_area -= stolen
    used_area[0] = 0
    used_c[mask] = i + 1
    used_area[i + 1] += int(mask.sum())
