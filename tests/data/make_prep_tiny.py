"""Builder of ``tests/data/prep_tiny/``: a hand-made 64x64 COCO set that exposes every quirk of SPEC §7.1.

Run ``python tests/data/make_prep_tiny.py`` to rewrite the committed files; ``tests/test_prep_quirks.py``
checks that the committed files equal what this builder makes, then checks the retrieval on them.

Rectangles are written as polygons ``[x0, y0, x1, y0, x1, y1, x0, y1]``; ``cv2.fillPoly`` (the
retrieval's rasteriser) fills columns x0..x1 and rows y0..y1 inclusive, so ``rect(0, 0, 9, 9)`` has
100 pixels. Panoptic segments are painted from pixel rectangles (inclusive), their JSON ``bbox`` is the
exact pixel box unless a case overrides it. Instance ``bbox``/``area`` come from pycocotools.

Images (panoptic ``images`` order 4, 1, 2, 3, 5, 6, 7 so that the output key order is visible):

1. ratio and d rules. Annotation order G, H, A, B, C, D, E, F (ids 17, 18, 11..16).
   A/B: overlap 20 px = exactly 0.2 of both 100-px masks -> not judged (strict ``>``, Q6).
   C/D: overlap 30 px (0.3) -> judged, D lost nothing, C lost 30 -> D in front of C.
   E/F: overlap 50 px; the overlap is VOID in the panoptic PNG, each lost 50 px -> tie, nothing (Q9).
   G/H: H (64 px) inside G (1600 px): 0.04 for G but 1.0 for H -> judged (OR, Q6) -> H in front of G.
   Expected ``{17: [18], 13: [14]}`` (back ids in discovery order, not id order, Q10).
2. same bbox, double and third match, category not checked (Q1, Q2). P, Q (person) have the same
   polygon, R (kite) an L-shaped polygon with the same bbox. Segments sP, sQ, sR (each a 10-row band of the
   P/Q/R area) are all nearest to P (ties -> first in annotation order): sP -> P, sQ -> P drops both,
   sR (a kite segment) -> P accepted again. Q and R stay unmatched. S/T (cup/bottle) overlap 100 px,
   T in front. Expected ``{24: [25]}``.
3. crowd (Q3). U is a crowd instance (uncompressed RLE) under V; W is non-crowd but its panoptic
   segment says ``iscrowd: 1``; X covers part of W. Both pairs would give a relation without the crowd
   rule; expected ``{}`` (an image with both annotations always gets an entry).
4. truncation, bbox restriction, front order (Q4, Q5, Q10). A4 = rect 0..9; B4's left edge is at
   x = 7.9, truncated to 7 -> 30 px overlap (0.3, judged; rounding would give exactly 0.2) -> B4 in front.
   C4/D4 overlap 200 px, C4 is in front in the PNG, but C4's JSON bbox covers only x 30..34 -> only
   100 of its 400 visible pixels count -> d_C4 = 300 > d_D4 = 200 -> D4 judged in front (wrong, as the
   original). F4 (id 47) and G4 (id 46) both lie on E4, annotation order F4, E4, G4 -> fronts [47, 46].
   Expected ``{41: [42], 43: [44], 45: [47, 46]}``.
5. degenerate and RLE (Q7, deviations). Z1's polygon lies outside the image: 0 pixels, pycocotools bbox
   [0, 0, 0, 0] (the "empty box"), matched to a 1-pixel segment; its pairs divide 0 by 0 -> skipped.
   Z2/Z3 a normal pair. Z4 is a NON-crowd instance with a compressed RLE (the original crashes; here
   decoded), Z5 covers half of it. Expected ``{52: [53], 54: [55]}``.
6. panoptic annotation only (no instances) -> no entry.
7. instances only, listed in the panoptic ``images`` but without panoptic annotation -> no entry.
8. instances only, not in the panoptic JSON at all -> no entry.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from rap_jax.data import categories as cats  # noqa: E402
from rap_jax.data import prep_io  # noqa: E402

H = W = 64
OUT = pathlib.Path(__file__).resolve().parent / "prep_tiny"


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
  return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _box_mask(*boxes: tuple[int, int, int, int]) -> np.ndarray:
  m = np.zeros((H, W), dtype=np.uint8)
  for x0, y0, x1, y1 in boxes:
    m[y0:y1 + 1, x0:x1 + 1] = 1
  return m


def _ann(ann_id: int, image_id: int, cid: int, seg: Any, iscrowd: int = 0) -> dict[str, Any]:
  if isinstance(seg, dict):
    rle = mask_utils.frPyObjects(seg, H, W) if isinstance(seg["counts"], list) else seg
  else:
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
  return {"id": ann_id, "image_id": image_id, "category_id": cid, "segmentation": seg,
          "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
          "iscrowd": iscrowd}


def _uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
  flat = m.ravel(order="F").astype(np.int8)
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0] == 1:
    counts = [0] + counts
  return {"counts": counts, "size": [H, W]}


def _compressed_rle(m: np.ndarray) -> dict[str, Any]:
  rle = mask_utils.encode(np.asfortranarray(m))
  return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


_next_id = iter(range(1, 1000))


def _seg(cid: int, boxes: list[tuple[int, int, int, int]], iscrowd: int = 0,
         bbox: list[int] | None = None) -> dict[str, Any]:
  """A panoptic segment from inclusive pixel boxes; ``bbox`` overrides the exact pixel box."""
  return {"id": 100003 * next(_next_id), "category_id": cid, "iscrowd": iscrowd,
          "_boxes": boxes, "_bbox": bbox}


def _images() -> list[dict[str, Any]]:
  """[{id, instances, segments (None = no panoptic annotation), stuff}] in image-id order."""
  imgs = []
  # 1: ratio / tie / OR, annotation order G, H, A, B, C, D, E, F
  imgs.append({"id": 1, "instances": [
      _ann(17, 1, 1, [rect(20, 20, 59, 59)]), _ann(18, 1, 37, [rect(50, 50, 57, 57)]),
      _ann(11, 1, 47, [rect(0, 0, 9, 9)]), _ann(12, 1, 47, [rect(8, 0, 17, 9)]),
      _ann(13, 1, 44, [rect(30, 0, 39, 9)]), _ann(14, 1, 44, [rect(37, 0, 46, 9)]),
      _ann(15, 1, 18, [rect(0, 30, 9, 39)]), _ann(16, 1, 17, [rect(5, 30, 14, 39)])],
      "segments": [
      _seg(1, [(20, 20, 59, 49), (20, 50, 49, 57), (58, 50, 59, 57), (20, 58, 59, 59)]),  # G
      _seg(37, [(50, 50, 57, 57)]),  # H
      _seg(47, [(0, 0, 7, 9)]), _seg(47, [(8, 0, 17, 9)]),  # A, B (B in front)
      _seg(44, [(30, 0, 36, 9)]), _seg(44, [(37, 0, 46, 9)]),  # C, D (D in front)
      _seg(18, [(0, 30, 4, 39)]), _seg(17, [(10, 30, 14, 39)])],  # E, F; x 5..9 void
      "stuff": 187})
  # 2: same bbox, double / third match
  ell = [[0.0, 0.0, 29.0, 0.0, 29.0, 10.0, 10.0, 10.0, 10.0, 29.0, 0.0, 29.0]]  # an L
  imgs.append({"id": 2, "instances": [
      _ann(21, 2, 1, [rect(0, 0, 29, 29)]), _ann(22, 2, 1, [rect(0, 0, 29, 29)]),
      _ann(23, 2, 38, ell), _ann(24, 2, 47, [rect(40, 0, 59, 19)]),
      _ann(25, 2, 44, [rect(50, 10, 59, 39)])],
      "segments": [
      _seg(1, [(0, 0, 29, 9)]), _seg(1, [(0, 10, 29, 19)]), _seg(38, [(0, 20, 29, 29)]),
      _seg(47, [(40, 0, 59, 9), (40, 10, 49, 19)]), _seg(44, [(50, 10, 59, 39)])],
      "stuff": 193})
  # 3: crowd instance; crowd segment on a non-crowd instance
  imgs.append({"id": 3, "instances": [
      _ann(31, 3, 1, _uncompressed_rle(_box_mask((0, 0, 19, 19))), iscrowd=1),
      _ann(32, 3, 1, [rect(10, 10, 29, 29)]),
      _ann(33, 3, 18, [rect(40, 40, 59, 59)]), _ann(34, 3, 18, [rect(50, 30, 63, 49)])],
      "segments": [
      _seg(1, [(0, 0, 19, 9), (0, 10, 9, 19)], iscrowd=1), _seg(1, [(10, 10, 29, 29)]),
      _seg(18, [(40, 40, 49, 59), (50, 50, 59, 59)], iscrowd=1), _seg(18, [(50, 30, 63, 49)])],
      "stuff": 171})
  # 4: truncation, bbox restriction, front order; annotation order A4 B4 C4 D4 F4 E4 G4
  imgs.append({"id": 4, "instances": [
      _ann(41, 4, 51, [rect(0, 0, 9, 9)]), _ann(42, 4, 51, [rect(7.9, 0, 16, 9)]),
      _ann(43, 4, 62, [rect(30, 0, 49, 19)]), _ann(44, 4, 62, [rect(40, 0, 59, 19)]),
      _ann(47, 4, 17, [rect(0, 30, 9, 39)]), _ann(45, 4, 65, [rect(0, 30, 29, 59)]),
      _ann(46, 4, 17, [rect(20, 50, 29, 59)])],
      "segments": [
      _seg(51, [(0, 0, 6, 9)]), _seg(51, [(7, 0, 16, 9)]),
      _seg(62, [(30, 0, 49, 19)], bbox=[30, 0, 5, 20]), _seg(62, [(50, 0, 59, 19)]),
      _seg(17, [(0, 30, 9, 39)]), _seg(65, [(10, 30, 29, 49), (0, 40, 9, 59), (10, 50, 19, 59)]),
      _seg(17, [(20, 50, 29, 59)])],
      "stuff": 149})
  # 5: empty box, RLE non-crowd
  imgs.append({"id": 5, "instances": [
      _ann(51, 5, 44, [[100.0, 100.0, 110.0, 100.0, 110.0, 110.0]]),
      _ann(52, 5, 1, [rect(20, 20, 39, 39)]), _ann(53, 5, 1, [rect(30, 30, 49, 49)]),
      _ann(54, 5, 37, _compressed_rle(_box_mask((50, 0, 59, 9)))),
      _ann(55, 5, 37, [rect(55, 0, 63, 9)])],
      "segments": [
      _seg(44, [(0, 0, 0, 0)]), _seg(1, [(20, 20, 39, 29), (20, 30, 29, 39)]),
      _seg(1, [(30, 30, 49, 49)]), _seg(37, [(50, 0, 54, 9)]), _seg(37, [(55, 0, 63, 9)])],
      "stuff": 155})
  imgs.append({"id": 6, "instances": [], "segments": [_seg(1, [(5, 5, 20, 20)])], "stuff": 154})
  imgs.append({"id": 7, "instances": [_ann(71, 7, 1, [rect(0, 0, 9, 9)])], "segments": None})
  imgs.append({"id": 8, "instances": [_ann(81, 8, 1, [rect(0, 0, 9, 9)])], "segments": None,
               "not_in_panoptic": True})
  return imgs


def build(out: pathlib.Path = OUT) -> None:
  """Writes instances.json, panoptic.json and panoptic/*.png under ``out``."""
  global _next_id
  _next_id = iter(range(1, 1000))
  imgs = _images()
  out = pathlib.Path(out)
  (out / "panoptic").mkdir(parents=True, exist_ok=True)
  info = {"description": "rap_jax tests: hand-made quirk set for retrieve_relation (SPEC 7.1)"}
  entries = {im["id"]: {"id": im["id"], "file_name": f"tiny_{im['id']}.jpg", "height": H, "width": W}
             for im in imgs}
  instances = {"info": info, "licenses": [], "images": list(entries.values()),
               "annotations": [a for im in imgs for a in im["instances"]],
               "categories": cats.thing_categories_json()}
  order = [4, 1, 2, 3, 5, 6, 7]
  pano_anns = []
  for im in sorted((im for im in imgs if im["segments"] is not None), key=lambda im: order.index(im["id"])):
    ids = np.zeros((H, W), dtype=np.uint32)
    for s in im["segments"]:
      for x0, y0, x1, y1 in s["_boxes"]:
        ids[y0:y1 + 1, x0:x1 + 1] = s["id"]
    # stuff: everything still free except the void gap of image 1 (x 5..9, y 30..39)
    free = ids == 0
    if im["id"] == 1:
      free[30:40, 5:10] = False
    stuff = {"id": 100003 * 150, "category_id": im["stuff"], "iscrowd": 0}
    ids[free] = stuff["id"]
    segs = []
    for s in im["segments"] + [stuff]:
      m = ids == s["id"]
      ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
      bbox = s.get("_bbox") or [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
      segs.append({"id": s["id"], "category_id": s["category_id"], "iscrowd": s["iscrowd"],
                   "bbox": bbox, "area": int(m.sum())})
    name = f"tiny_{im['id']}.png"
    prep_io.write_rgb_png(out / "panoptic" / name, prep_io.id2rgb(ids))
    pano_anns.append({"image_id": im["id"], "file_name": name, "segments_info": segs})
  panoptic = {"info": info, "licenses": [],
              "images": [entries[i] for i in order],
              "annotations": pano_anns, "categories": cats.categories_json()}
  for name, obj in (("instances.json", instances), ("panoptic.json", panoptic)):
    with open(out / name, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=None, separators=(",", ":"))


if __name__ == "__main__":
  build()
  print(f"wrote {OUT}")
