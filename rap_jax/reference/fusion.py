"""Readable numpy loops of the three panoptic fusions (SPEC §5), the oracle for rap_jax.ops.fusion.

Each function follows `engine/combine_methods.py` of the original line by line: the same
thresholds, the same comparison operators, the same float64 ratio divisions, the same order of
segment ids. Instances are given as dense arrays in DETECTION order (the model's order) with an
optional `valid` mask for padded slots; the stuff candidates come from the semantic map.

The original draws a fresh id from an `IdGenerator` for every accepted segment and writes it into
`pan`; here `new_id` defaults to a counter 1, 2, 3, ... (pass `IdGenerator.get_id` to get real
panoptic ids). Consumed ids of segments dropped by the refinement stay consumed, as in the
original.

Never imported by jitted code (tests/test_imports.py).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np

from rap_jax.data import categories as cats

NewId = Callable[[int], int]


@dataclasses.dataclass
class ReferenceResult:
  """One image's panoptic segmentation as the original builds it.

  pan: [H, W] int64 segment id per pixel, 0 = unassigned (the PNG content before id2rgb).
  segments_info: in the order the original appends them; each
    {"id": int, "category_id": int, "isthing": bool, "instance": detection index or -1}.
  """
  pan: np.ndarray
  segments_info: list[dict]

  def segment_map(self) -> np.ndarray:
    """[H, W] int32: 1 + position of the pixel's segment in `segments_info`, 0 = unassigned."""
    lut = {s["id"]: k + 1 for k, s in enumerate(self.segments_info)}
    out = np.zeros(self.pan.shape, np.int32)
    for sid, k in lut.items():
      out[self.pan == sid] = k
    return out


def _counter() -> NewId:
  it = itertools.count(1)
  return lambda category_id: next(it)


def _instances(scores, valid, confidence_thr: float) -> list[int]:
  """Prologue of all three fusions (SPEC §5 steps 1-2): detection indices kept, score-sorted.

  `not (score < thr)` is evaluated on Python floats (float64), as the original does with the
  float32 score converted by `.tolist()`. `sorted` is stable: equal scores keep detection order.
  """
  n = len(scores)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
  kept = [i for i in range(n) if valid[i] and not float(scores[i]) < float(confidence_thr)]
  return sorted(kept, key=lambda i: -float(scores[i]))


def _stuff_stage(pan: np.ndarray, semantic: np.ndarray, segments_info: list[dict],
                 stuff_area_limit: float, new_id: NewId) -> None:
  """SPEC §5.4: stuff candidates in increasing channel order fill the free pixels (in place)."""
  for channel in range(1, cats.NUM_STUFF_CLASSES + 1):
    stuff_mask = semantic == channel
    if not stuff_mask.any():      # the original only makes candidates for channels present
      continue
    left = np.logical_and(pan == 0, stuff_mask)
    if left.sum() < stuff_area_limit:
      continue
    category_id = int(cats.SEMANTIC_TO_COCO[channel])
    sid = new_id(category_id)
    pan[left] = sid
    segments_info.append({"id": sid, "category_id": category_id, "isthing": False,
                          "instance": -1})


def _refine(pan: np.ndarray, segments_info: list[dict]) -> list[dict]:
  """Drop thing segments whose pixels were all taken by later instances (RAP, OCFusion)."""
  return [s for s in segments_info if np.sum(pan == s["id"]) > 0]


def fuse_heuristic_reference(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                             semantic: np.ndarray, *, valid: np.ndarray | None = None,
                             confidence_thr: float = 0.5, overlap_thr: float = 0.5,
                             stuff_area_limit: float = 4096,
                             new_id: NewId | None = None) -> ReferenceResult:
  """Panoptic FPN heuristic (SPEC §5.1, `combine_to_panoptic_heuristic`).

  masks: [N, H, W] bool pasted instance masks; scores: [N] float; labels: [N] COCO ids;
  semantic: [H, W] int semantic channel ids 0..54; valid: [N] bool (None = all valid).
  """
  new_id = new_id or _counter()
  masks = np.asarray(masks, bool)
  pan = np.zeros(semantic.shape, np.int64)
  used = np.zeros(semantic.shape, bool)
  segments_info = []
  for i in _instances(scores, valid, confidence_thr):
    mask = masks[i]
    area = int(mask.sum())
    if area == 0:
      continue
    intersect = int(np.logical_and(used, mask).sum())
    if intersect / area > overlap_thr:
      continue
    used |= mask
    if intersect != 0:
      mask = np.logical_and(pan == 0, mask)
    sid = new_id(int(labels[i]))
    pan[mask] = sid
    segments_info.append({"id": sid, "category_id": int(labels[i]), "isthing": True,
                          "instance": i})
  _stuff_stage(pan, np.asarray(semantic), segments_info, stuff_area_limit, new_id)
  return ReferenceResult(pan, segments_info)


def fuse_rap_reference(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       relation: np.ndarray, semantic: np.ndarray, *,
                       valid: np.ndarray | None = None, confidence_thr: float = 0.5,
                       overlap_thr: float = 0.5, large_overlap_thr: float = 0.5,
                       stuff_area_limit: float = 4096,
                       new_id: NewId | None = None) -> ReferenceResult:
  """RAP fusion (SPEC §5.2, `combine_to_panoptic_RAP`).

  relation: [N] relation values (smaller = nearer); compared in float32 as in the original, whose
  `used_relation_vals` array is float32. Other arguments as in `fuse_heuristic_reference`.
  """
  new_id = new_id or _counter()
  masks = np.asarray(masks, bool)
  relation = np.asarray(relation, np.float32)
  pan = np.zeros(semantic.shape, np.int64)
  used_label = np.zeros(semantic.shape, np.int64)
  used_relation = np.full(semantic.shape, np.inf, np.float32)
  segments_info = []
  for i in _instances(scores, valid, confidence_thr):
    mask = masks[i]
    label = int(labels[i])
    area = int(mask.sum())
    if area == 0:
      continue
    intersect_mask = np.logical_and(pan > 0, mask)
    same_label = int(np.logical_and(intersect_mask, used_label == label).sum())
    intersect = int(intersect_mask.sum())
    if same_label / area > overlap_thr:                 # same-class overlap: skip
      continue
    is_valid = True
    if intersect != 0:
      for sid in np.unique(pan[intersect_mask]):
        id_area = int(np.sum(pan == sid))
        ov = int(np.logical_and(pan == sid, intersect_mask).sum())
        if ov / area >= large_overlap_thr and ov / id_area >= large_overlap_thr:
          is_valid = False                              # large mutual overlap: duplicate
          break
      # strict '>' in float32: free pixels (+inf) and pixels of farther owners
      mask = np.logical_and(used_relation > relation[i], mask)
    if not is_valid:
      continue
    if int(mask.sum()) / area <= overlap_thr:           # remaining share too small
      continue
    sid = new_id(label)
    pan[mask] = sid
    used_label[mask] = label
    used_relation[mask] = relation[i]
    segments_info.append({"id": sid, "category_id": label, "isthing": True, "instance": i})
  segments_info = _refine(pan, segments_info)
  _stuff_stage(pan, np.asarray(semantic), segments_info, stuff_area_limit, new_id)
  return ReferenceResult(pan, segments_info)


def fuse_ocfusion_reference(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                            occlusion: np.ndarray, semantic: np.ndarray, *,
                            valid: np.ndarray | None = None, confidence_thr: float = 0.5,
                            overlap_thr: float = 0.5, stuff_area_limit: float = 4096,
                            oc_pair_overlap_thr: float = 0.2,
                            new_id: NewId | None = None) -> ReferenceResult:
  """OCFusion fusion (SPEC §5.3, `combine_to_panoptic_ocfusion`).

  occlusion: [N, N] bool, [new instance, placed instance] in detection order: True when the
  instance being added occludes (is in front of) the placed one. Instance ids are 1-based
  detection indices, as `inference_ps_ocfusion` assigns them.
  """
  new_id = new_id or _counter()
  masks = np.asarray(masks, bool)
  occlusion = np.asarray(occlusion, bool)
  pan = np.zeros(semantic.shape, np.int64)
  used = np.zeros(semantic.shape, np.int64)            # 1-based detection id of the owner
  segments_info = []
  for i in _instances(scores, valid, confidence_thr):
    mask = masks[i]
    area = int(mask.sum())
    if area == 0:
      continue
    intersect_mask = np.logical_and(used > 0, mask)
    intersect = int(intersect_mask.sum())
    if intersect != 0:
      mask = np.logical_and(used == 0, mask)            # start from the free pixels
      for oid in np.unique(used[intersect_mask]):
        id_area = int(np.sum(used == oid))
        ov_mask = np.logical_and(used == oid, intersect_mask)
        ov = int(ov_mask.sum())
        if ov / area >= oc_pair_overlap_thr or ov / id_area >= oc_pair_overlap_thr:
          if occlusion[i, oid - 1]:                     # the new instance is in front
            mask[ov_mask] = True
      if int(mask.sum()) / area <= overlap_thr:
        continue
    label = int(labels[i])
    sid = new_id(label)
    pan[mask] = sid
    used[mask] = i + 1
    segments_info.append({"id": sid, "category_id": label, "isthing": True, "instance": i})
  segments_info = _refine(pan, segments_info)
  _stuff_stage(pan, np.asarray(semantic), segments_info, stuff_area_limit, new_id)
  return ReferenceResult(pan, segments_info)


def fuse_reference(method: str, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   semantic: np.ndarray, *, relation: np.ndarray | None = None,
                   occlusion: np.ndarray | None = None, valid: np.ndarray | None = None,
                   confidence_thr: float = 0.5, overlap_thr: float = 0.5,
                   large_overlap_thr: float = 0.5, stuff_area_limit: float = 4096,
                   oc_pair_overlap_thr: float = 0.2,
                   new_id: NewId | None = None) -> ReferenceResult:
  """Dispatch on `method` in {'heuristic', 'rap', 'ocfusion'} (config.fusion.method)."""
  common = dict(valid=valid, confidence_thr=confidence_thr, overlap_thr=overlap_thr,
                stuff_area_limit=stuff_area_limit, new_id=new_id)
  if method == "heuristic":
    return fuse_heuristic_reference(masks, scores, labels, semantic, **common)
  if method == "rap":
    if relation is None:
      raise ValueError("method 'rap' needs relation values")
    return fuse_rap_reference(masks, scores, labels, relation, semantic,
                              large_overlap_thr=large_overlap_thr, **common)
  if method == "ocfusion":
    if occlusion is None:
      raise ValueError("method 'ocfusion' needs the occlusion matrix")
    return fuse_ocfusion_reference(masks, scores, labels, occlusion, semantic,
                                   oc_pair_overlap_thr=oc_pair_overlap_thr, **common)
  raise ValueError(f"unknown fusion method {method!r}; expected 'heuristic', 'rap' or 'ocfusion'")
