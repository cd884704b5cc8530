"""Occlusion relations mined from COCO instances vs panoptic masks (SPEC §7.1, §7.2).

A re-implementation of RAP's ``datasets/coco/retrieve_relation.py`` and
``refine_instance_json_file.py`` that keeps every matching rule of the original, quirks included,
without its hard-coded paths and with JSON instead of pickle. Per image (images in the order of the
panoptic JSON's ``images`` list, those with both an instances and a panoptic annotation):

1. Matching (:func:`match_segments`). Thing segments of the panoptic annotation (``isthing`` taken
   from the panoptic JSON's own ``categories``), in ``segments_info`` order, are matched to the
   instance annotation of the same image whose ``bbox`` ``[x, y, w, h]`` is nearest in Euclidean
   distance. Quirks kept:

   * Q1 strict ``<`` with initial best distance 9999: among equally near instances the first in
     annotation order wins; the category is not checked (a cup segment may match a bowl).
   * Q2 an instance matched a second time loses both matches (the earlier segment is unmatched and
     the new one is not recorded); a third segment matching it is accepted again, and so on.
   * Deviation: a segment with no instance nearer than 9999 px makes the original crash (its assert
     or a ``KeyError`` on ``None``); here that segment is simply left unmatched.

2. Both lists are restricted to matched pairs (instances keep annotation order).
3. Masks, only for pairs where neither the segment nor the instance is crowd (Q3 crowd exclusion:
   a crowd segment matched to a non-crowd instance removes that instance too):

   * Q4 panoptic mask = pixels of the PNG equal to the segment id *inside the segment's integer
     bbox* (pixels outside the JSON bbox are not counted).
   * Q5 instance mask = every polygon filled with ``cv2.fillPoly`` after truncating the vertex
     coordinates toward zero (``astype(int)``); boundary pixels are included, so it is about one
     pixel wider than pycocotools' rasterisation. Deviations: a polygon with no vertex is skipped
     (OpenCV rejects it), a non-crowd RLE segmentation (the original crashes on it) is decoded
     with pycocotools.

4. Pairs ``i < j`` in that order. ``o = |M_i & M_j|``. Q6 the pair is judged only if
   ``o / |M_i| > ratio or o / |M_j| > ratio`` (strict, OR; default ratio 0.2). Q7 a zero-area mask
   gives ``0/0`` in the original (a NumPy warning, the comparison is false): the pair is skipped.
   ``d_k = |M_k| - |panoptic mask k|`` is the *total* number of pixels instance ``k`` lost to all
   its occluders; Q8 ``d_i < d_j`` -> ``i`` is in front of ``j`` (``i`` appended to
   ``relation[j]``), ``d_j < d_i`` -> the reverse, Q9 equal -> no relation.
5. Q10 output ``{image_id: {back_id: [front_ids]}}``: back ids in order of first discovery, fronts
   in order of discovery; every image that has both annotations gets an entry, ``{}`` if it has no
   relation. JSON object keys are strings (the original pickled Python ints).
"""
from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from rap_jax.data import prep_io

RelationDict = dict[int, list[int]]  # back instance id -> front instance ids
_INITIAL_MIN_DIST = 9999


def fillpoly_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
  """[H, W] uint8 0/1 amodal mask of an instance, rasterised as the original retrieval does (Q5).

  Args:
    segmentation: COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (an odd trailing coordinate is
      ignored, as in the original); an RLE dict is decoded with pycocotools instead.
    height, width: canvas size in pixels.
  """
  if isinstance(segmentation, dict):
    return rle_mask(segmentation, height, width)
  mask = np.zeros((height, width), dtype=np.uint8)
  for poly in segmentation:
    n = len(poly) // 2
    if n == 0:
      continue
    # np.array(...).astype(int) truncates toward zero, like the original's np.int cast.
    pts = np.asarray(poly[:2 * n], dtype=np.float64).reshape(1, n, 2).astype(np.int64)
    cv2.fillPoly(mask, pts.astype(np.int32), 1)
  return mask


def rle_mask(segmentation: Mapping[str, Any], height: int, width: int) -> np.ndarray:
  """[H, W] uint8 mask of a COCO RLE (compressed or uncompressed ``counts``)."""
  h, w = segmentation["size"]
  rle = segmentation
  if isinstance(segmentation["counts"], list):
    rle = mask_utils.frPyObjects(segmentation, h, w)
  m = mask_utils.decode([rle])[:, :, 0].astype(np.uint8)  # list form: no NumPy-2 deprecation
  if m.shape != (height, width):
    out = np.zeros((height, width), dtype=np.uint8)
    hh, ww = min(h, height), min(w, width)
    out[:hh, :ww] = m[:hh, :ww]
    m = out
  return m


def match_segments(segments: Sequence[Mapping[str, Any]],
                   instances: Sequence[Mapping[str, Any]]) -> tuple[dict[int, int], dict[int, int]]:
  """Nearest-bbox matching of thing segments to instance annotations (Q1, Q2).

  Args:
    segments: thing segments (``id``, ``bbox``) in ``segments_info`` order.
    instances: instance annotations (``id``, ``bbox``) of the same image, in annotation order.
  Returns:
    ``(segment_to_instance, instance_to_segment)``, both in insertion order.
  """
  seg_to_inst: dict[int, int] = {}
  inst_to_seg: dict[int, int] = {}
  if not instances:
    return seg_to_inst, inst_to_seg
  inst_boxes = np.asarray([a["bbox"] for a in instances])  # [N, 4]
  for seg in segments:
    # [N] Euclidean distance on [x, y, w, h]; argmin = first minimum = the strict-< scan.
    dist = np.sqrt(np.sum((np.asarray(seg["bbox"]) - inst_boxes) ** 2, axis=1))
    k = int(np.argmin(dist))
    if not dist[k] < _INITIAL_MIN_DIST:
      continue  # deviation: the original crashes here
    inst_id = instances[k]["id"]
    if inst_id in inst_to_seg:  # second match: drop both
      del seg_to_inst[inst_to_seg[inst_id]]
      del inst_to_seg[inst_id]
    else:
      inst_to_seg[inst_id] = seg["id"]
      seg_to_inst[seg["id"]] = inst_id
  return seg_to_inst, inst_to_seg


def _crop(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
  """(y0, x0, crop) of the non-zero bounding box of ``mask`` (an empty crop for an empty mask)."""
  ys = np.flatnonzero(mask.any(axis=1))
  if ys.size == 0:
    return 0, 0, mask[:0, :0]
  xs = np.flatnonzero(mask.any(axis=0))
  return int(ys[0]), int(xs[0]), mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def _overlap(a: tuple[int, int, np.ndarray], b: tuple[int, int, np.ndarray]) -> int:
  """|A & B| of two cropped masks."""
  (ay, ax, am), (by, bx, bm) = a, b
  y0, x0 = max(ay, by), max(ax, bx)
  y1, x1 = min(ay + am.shape[0], by + bm.shape[0]), min(ax + am.shape[1], bx + bm.shape[1])
  if y1 <= y0 or x1 <= x0:
    return 0
  a_part = am[y0 - ay:y1 - ay, x0 - ax:x1 - ax]
  b_part = bm[y0 - by:y1 - by, x0 - bx:x1 - bx]
  return int(np.count_nonzero(a_part & b_part))


def image_relations(instances: Sequence[Mapping[str, Any]], segments: Sequence[Mapping[str, Any]],
                    ids: np.ndarray, thing_ids: Iterable[int], ratio: float = 0.2) -> RelationDict:
  """Relations of one image, steps 1-4 of the module docstring.

  Args:
    instances: the image's instance annotations in JSON order.
    segments: the image's panoptic ``segments_info`` (stuff included; filtered here).
    ids: [H, W] segment-id map of the panoptic PNG (H, W = the image's height, width).
    thing_ids: category ids with ``isthing`` in the panoptic JSON.
    ratio: overlap ratio threshold (strict ``>``).
  Returns:
    ``{back_id: [front_ids]}`` in discovery order.
  """
  thing_ids = set(thing_ids)
  height, width = ids.shape
  things = [s for s in segments if s["category_id"] in thing_ids]
  seg_to_inst, inst_to_seg = match_segments(things, instances)
  things = [s for s in things if s["id"] in seg_to_inst]
  matched = [a for a in instances if a["id"] in inst_to_seg]
  seg_crowd = {s["id"]: s.get("iscrowd", 0) for s in things}
  inst_crowd = {a["id"]: a.get("iscrowd", 0) for a in matched}

  pano_area: dict[int, int] = {}  # segment id -> visible pixels inside its integer bbox (Q4)
  for s in things:
    if seg_crowd[s["id"]] == 0 and inst_crowd[seg_to_inst[s["id"]]] == 0:
      x, y, w, h = (int(v) for v in s["bbox"])
      pano_area[s["id"]] = int(np.count_nonzero(ids[y:y + h, x:x + w] == s["id"]))

  masks, order = {}, []
  for a in matched:
    if a.get("iscrowd", 0) == 0 and seg_crowd[inst_to_seg[a["id"]]] == 0:
      masks[a["id"]] = _crop(fillpoly_mask(a["segmentation"], height, width))
      order.append(a["id"])
  areas = [int(np.count_nonzero(masks[i][2])) for i in order]

  relations: RelationDict = {}
  for i, id1 in enumerate(order):
    for j in range(i + 1, len(order)):
      id2 = order[j]
      o = _overlap(masks[id1], masks[id2])
      if o == 0:  # also covers 0/0 of a zero-area mask (Q7): never above the ratio
        continue
      if not (o / areas[i] > ratio or o / areas[j] > ratio):
        continue
      d1 = areas[i] - pano_area[inst_to_seg[id1]]
      d2 = areas[j] - pano_area[inst_to_seg[id2]]
      if d1 < d2:
        relations.setdefault(id2, []).append(id1)
      elif d2 < d1:
        relations.setdefault(id1, []).append(id2)
  return relations


def _images_to_process(instances_json: Mapping[str, Any], panoptic_json: Mapping[str, Any]):
  """(image entry, instance anns, panoptic ann) for images with both annotations, panoptic order."""
  by_image = collections.defaultdict(list)
  for a in instances_json["annotations"]:
    by_image[a["image_id"]].append(a)
  pano = {a["image_id"]: a for a in panoptic_json["annotations"]}  # last one wins, as the original
  for image in panoptic_json["images"]:
    if image["id"] in by_image and image["id"] in pano:
      yield image, by_image[image["id"]], pano[image["id"]]


def _one_image(args) -> tuple[int, RelationDict]:
  image, inst_anns, pano_ann, folder, thing_ids, ratio = args
  png = os.path.join(folder, pano_ann["file_name"])
  ids = prep_io.read_panoptic_png(png)
  if ids.shape != (image["height"], image["width"]):
    raise ValueError(f"{png}: PNG is {ids.shape[1]}x{ids.shape[0]} but the panoptic JSON says "
                     f"{image['width']}x{image['height']} for image {image['id']}")
  try:
    rel = image_relations(inst_anns, pano_ann["segments_info"], ids, thing_ids, ratio)
  except (KeyError, TypeError, ValueError, IndexError) as e:
    raise ValueError(f"image {image['id']} ({png}): malformed annotation: {e!r}") from e
  return image["id"], rel


def retrieve_relations(instances_json: Mapping[str, Any], panoptic_json: Mapping[str, Any],
                       panoptic_folder: prep_io.PathLike, ratio: float = 0.2, workers: int = 1,
                       progress: bool = False) -> dict[int, RelationDict]:
  """``{image_id: {back_id: [front_ids]}}`` (int keys) for a whole split (SPEC §7.1).

  Args:
    instances_json, panoptic_json: the loaded COCO instances / panoptic JSON.
    panoptic_folder: folder of the panoptic PNGs (``file_name`` of the panoptic annotations).
    ratio: overlap ratio threshold.
    workers: processes (results are assembled in image order, so the output does not depend on it).
    progress: show a tqdm bar.
  """
  thing_ids = [c["id"] for c in panoptic_json["categories"] if c["isthing"]]
  jobs = [(im, ia, pa, str(panoptic_folder), thing_ids, ratio)
          for im, ia, pa in _images_to_process(instances_json, panoptic_json)]
  results = prep_io.ordered_map(_one_image, jobs, workers, progress, "retrieve relations")
  out: dict[int, RelationDict] = {}
  for image_id, rel in results:
    out[image_id] = rel
  return out


def relations_to_json(relations: Mapping[int, Mapping[int, Sequence[int]]]
                      ) -> dict[str, dict[str, list[int]]]:
  """Int-keyed relations -> the JSON form (string keys, order kept)."""
  return {str(k): {str(b): [int(f) for f in fr] for b, fr in v.items()}
          for k, v in relations.items()}


def relations_from_json(obj: Mapping[str, Mapping[str, Sequence[int]]]) -> dict[int, RelationDict]:
  """The JSON form -> int keys (order kept): what the original's pickle holds."""
  return {int(k): {int(b): [int(f) for f in fr] for b, fr in v.items()} for k, v in obj.items()}


def count_relations(relations: Mapping[int, Mapping[int, Sequence[int]]]) -> tuple[int, int]:
  """(images with at least one relation, relations): the two numbers the original prints."""
  per_image = [sum(len(f) for f in r.values()) for r in relations.values()]
  return sum(1 for n in per_image if n > 0), sum(per_image)


def add_overlap_field(instances_json: dict[str, Any],
                      relations: Mapping[int, Mapping[int, Sequence[int]]]) -> dict[str, Any]:
  """Sets ``overlap`` = ids of the instances in front (or ``[]``) on every annotation (SPEC §7.2).

  Modifies ``instances_json`` in place (as the original does, so an existing ``overlap`` key keeps
  its position, a new one is appended last) and returns it. Crowd annotations get ``[]`` as well,
  since the retrieval never relates them.
  """
  for ann in instances_json["annotations"]:
    ann["overlap"] = list(relations.get(ann["image_id"], {}).get(ann["id"], []))
  return instances_json
