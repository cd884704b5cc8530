"""Box and mask AP through pycocotools' COCOeval (written by eval mode next to PQ).

The original RAP tools compute no AP (SPEC §8); this is maskrcnn-benchmark's `coco_eval.py`
protocol: one COCOeval run per IoU type over results in COCO detection format
``{image_id, category_id, bbox [x, y, w, h], score, segmentation RLE}``. pycocotools' prints go to
this module's logger (DEBUG).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_FIELD = {"bbox": "bbox", "segm": "segmentation"}


@contextlib.contextmanager
def _quiet(what: str):
  """Sends pycocotools' stdout to the logger."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    yield
  if buffer.getvalue().strip():
    log.debug("%s:\n%s", what, buffer.getvalue().rstrip())


def load_coco(gt: Any):
  """A pycocotools COCO from a path, a dataset dict or a COCO (returned as is)."""
  from pycocotools.coco import COCO
  if isinstance(gt, COCO):
    return gt
  with _quiet("COCO"):
    if isinstance(gt, dict):
      coco = COCO()
      coco.dataset = copy.deepcopy(gt)
      coco.createIndex()
    else:
      coco = COCO(str(gt))
  return coco


def coco_ap(gt_instances_json: Any, results: Sequence[dict],
            iou_types: Sequence[str] = ("bbox", "segm")) -> dict[str, dict[str, float]]:
  """COCOeval's 12 summary numbers per IoU type.

  gt_instances_json: instances JSON path, dataset dict or pycocotools COCO.
  results: COCO detection results; 'bbox' uses each result's bbox, 'segm' its segmentation.
  Returns {iou_type: {'AP', 'AP50', ..., 'ARl'}} (COCOeval's -1 where a range has no GT). With no
  result for a type, its numbers are 0.0 and a RuntimeWarning is issued.
  """
  from pycocotools.cocoeval import COCOeval
  coco_gt = load_coco(gt_instances_json)
  out: dict[str, dict[str, float]] = {}
  for iou_type in iou_types:
    if iou_type not in _FIELD:
      raise ValueError(f"iou_type must be one of {sorted(_FIELD)}, got {iou_type!r}")
    field = _FIELD[iou_type]
    # Only the field of this type, so that loadRes takes areas from it (maskrcnn-benchmark).
    dets = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
             field: r[field]} for r in results if r.get(field) is not None]
    if not dets:
      warnings.warn(f"coco_ap: no {iou_type} results; reporting 0.0", RuntimeWarning, stacklevel=2)
      out[iou_type] = {name: 0.0 for name in STAT_NAMES}
      continue
    unknown = {d["image_id"] for d in dets} - set(coco_gt.getImgIds())
    if unknown:
      raise ValueError(f"results for images not in the GT: {sorted(unknown)[:10]}")
    with _quiet(f"COCOeval {iou_type}"):
      coco_dt = coco_gt.loadRes(dets)
      evaluator = COCOeval(coco_gt, coco_dt, iou_type)
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    out[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
  return out


def detections_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray,
                       category_ids: np.ndarray, masks: np.ndarray | None = None,
                       plus_one: bool = True) -> list[dict]:
  """One image's detections -> COCO results.

  boxes: [N, 4] xyxy pixels of the original image; scores [N]; category_ids [N] COCO ids;
  masks: [N, H, W] bool pasted masks (optional). `plus_one` keeps maskrcnn-benchmark's xywh
  convention ``w = x2 - x1 + 1`` (BoxList.convert("xywh")).
  """
  from pycocotools import mask as mask_util
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  wh = boxes[:, 2:] - boxes[:, :2] + (1.0 if plus_one else 0.0)
  xywh = np.concatenate([boxes[:, :2], wh], axis=1)
  rles = [None] * len(boxes)
  if masks is not None and len(boxes):
    encoded = mask_util.encode(np.asfortranarray(np.moveaxis(np.asarray(masks, np.uint8), 0, -1)))
    for rle in encoded:
      rle["counts"] = rle["counts"].decode("ascii")
    rles = encoded
  out = []
  for k in range(len(boxes)):
    r = {"image_id": int(image_id), "category_id": int(category_ids[k]),
         "bbox": [float(v) for v in xywh[k]], "score": float(scores[k])}
    if rles[k] is not None:
      r["segmentation"] = rles[k]
    out.append(r)
  return out
