"""Format checks of COCO panoptic and instances annotations (used on the synthetic set and tests).

``check_panoptic`` follows the COCO panoptic format (and what panopticapi's ``pq_compute`` asserts,
SPEC §8): one annotation per image, a PNG of the image's size, every non-zero PNG id listed in
``segments_info`` and every listed id present in the PNG, unique ids, ``area`` = pixel count,
``bbox`` = integer ``[x, y, w, h]`` of the pixels (``w = x_max - x_min + 1``), known categories,
``iscrowd`` 0/1 (crowd only for things). ``check_instances`` checks the COCO instances format:
unique ids, known images and thing categories, polygons (>= 3 vertices) or RLE of the image size
(crowd = RLE), ``bbox`` / ``area`` equal to pycocotools' ``toBbox`` / ``area`` of the
segmentation, and a RAP ``overlap`` field (if present) that lists other instances of the image.
Both return a list of error strings (empty = valid).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from rap_jax.data import categories as cats
from rap_jax.data import prep_io


def _pixel_bbox(m: np.ndarray) -> list[int]:
  ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
  return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def check_panoptic(panoptic_json: Mapping[str, Any], panoptic_folder: prep_io.PathLike,
                   max_errors: int = 50) -> list[str]:
  """Errors of a COCO panoptic JSON + PNG folder (empty list if valid)."""
  errors: list[str] = []
  cat_ids = [c["id"] for c in panoptic_json["categories"]]
  if len(set(cat_ids)) != len(cat_ids):
    errors.append("duplicate category ids")
  known = set(cat_ids)
  thing = {c["id"] for c in panoptic_json["categories"] if c["isthing"]}
  images = {im["id"]: im for im in panoptic_json["images"]}
  if len(images) != len(panoptic_json["images"]):
    errors.append("duplicate image ids")
  seen = set()
  for ann in panoptic_json["annotations"]:
    if len(errors) >= max_errors:
      break
    iid = ann["image_id"]
    where = f"image {iid} ({ann.get('file_name')})"
    if iid not in images:
      errors.append(f"{where}: image id not in images")
      continue
    if iid in seen:
      errors.append(f"{where}: more than one annotation")
    seen.add(iid)
    try:
      ids = prep_io.read_panoptic_png(os.path.join(panoptic_folder, ann["file_name"]))
    except (FileNotFoundError, ValueError) as e:
      errors.append(str(e))
      continue
    im = images[iid]
    if ids.shape != (im["height"], im["width"]):
      errors.append(f"{where}: PNG size {ids.shape} != ({im['height']}, {im['width']})")
      continue
    seg_ids = [s["id"] for s in ann["segments_info"]]
    if len(set(seg_ids)) != len(seg_ids) or 0 in seg_ids:
      errors.append(f"{where}: segment ids not unique or 0")
    png_ids = set(np.unique(ids).tolist()) - {0}
    if png_ids != set(seg_ids):
      errors.append(f"{where}: PNG ids without segment {sorted(png_ids - set(seg_ids))}, "
                    f"segments without pixels {sorted(set(seg_ids) - png_ids)}")
    for s in ann["segments_info"]:
      if s["category_id"] not in known:
        errors.append(f"{where}: segment {s['id']} unknown category {s['category_id']}")
      crowd = s.get("iscrowd", 0)
      if crowd not in (0, 1) or (crowd and s["category_id"] not in thing):
        errors.append(f"{where}: segment {s['id']} bad iscrowd {s.get('iscrowd')}")
      m = ids == s["id"]
      if not m.any():
        continue
      if s["area"] != int(np.count_nonzero(m)):
        errors.append(f"{where}: segment {s['id']} area {s['area']} != {int(np.count_nonzero(m))}")
      if list(s["bbox"]) != _pixel_bbox(m):
        errors.append(f"{where}: segment {s['id']} bbox {s['bbox']} != {_pixel_bbox(m)}")
  missing = set(images) - seen
  if missing:
    errors.append(f"{len(missing)} images without annotation, e.g. {sorted(missing)[:5]}")
  return errors


def check_instances(instances_json: Mapping[str, Any], max_errors: int = 50) -> list[str]:
  """Errors of a COCO instances JSON (empty list if valid)."""
  errors: list[str] = []
  cat_ids = {c["id"] for c in instances_json["categories"]}
  if not cat_ids <= set(cats.THING_IDS):
    errors.append(f"non-thing categories {sorted(cat_ids - set(cats.THING_IDS))}")
  images = {im["id"]: im for im in instances_json["images"]}
  anns = instances_json["annotations"]
  ann_ids = [a["id"] for a in anns]
  if len(set(ann_ids)) != len(ann_ids):
    errors.append("duplicate annotation ids")
  image_of = {a["id"]: a["image_id"] for a in anns}
  for a in anns:
    if len(errors) >= max_errors:
      break
    where = f"annotation {a['id']} (image {a['image_id']})"
    im = images.get(a["image_id"])
    if im is None:
      errors.append(f"{where}: unknown image")
      continue
    if a["category_id"] not in cat_ids:
      errors.append(f"{where}: unknown category {a['category_id']}")
    h, w = im["height"], im["width"]
    seg = a["segmentation"]
    if isinstance(seg, dict):
      if list(seg["size"]) != [h, w]:
        errors.append(f"{where}: RLE size {seg['size']} != [{h}, {w}]")
        continue
      rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    else:
      if a["iscrowd"]:
        errors.append(f"{where}: crowd annotation with polygons")
      if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
        errors.append(f"{where}: polygon with fewer than 3 vertices or odd length")
        continue
      rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    bbox = mask_utils.toBbox(rle).tolist()
    if not np.allclose(a["bbox"], bbox, atol=1e-6):
      errors.append(f"{where}: bbox {a['bbox']} != toBbox {bbox}")
    if abs(a["area"] - float(mask_utils.area(rle))) > 1e-6:
      errors.append(f"{where}: area {a['area']} != {float(mask_utils.area(rle))}")
    for f in a.get("overlap", []):
      if f == a["id"] or image_of.get(f) != a["image_id"]:
        errors.append(f"{where}: overlap id {f} is not another instance of the image")
  return errors
