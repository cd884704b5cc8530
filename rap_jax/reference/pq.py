"""Panoptic quality as a plain loop over segment pairs, written from SPEC §8 (tests only).

Also the synthetic panoptic data (GT and prediction PNGs + JSON) that the PQ tests and
`scripts/bench_pq.py` use. Nothing here is imported by `rap_jax/metrics/`.

A PNG holds ids as RGB: ``id = R + 256 G + 256^2 B`` (SPEC §4.2); 0 is VOID.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

OFFSET = 256 ** 3
VOID = 0


# ------------------------------------------------------------------------------------------------
# The reference computation.


def read_ids(path: str) -> np.ndarray:
  """Panoptic PNG -> [H, W] int64 ids (R + 256 G + 65536 B)."""
  rgb = np.array(Image.open(path).convert("RGB"), dtype=np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def image_counts(gt_ids: np.ndarray, gt_segments: Sequence[dict], pred_ids: np.ndarray,
                 pred_segments: Sequence[dict]) -> dict[int, list]:
  """One image, SPEC §8 step by step -> {category_id: [tp, fp, fn, iou_sum]}.

  gt_ids, pred_ids: [H, W] integer ids. GT segments carry id, category_id, iscrowd and (optionally)
  area; without area the PNG pixel count is used. Inputs are assumed consistent (no checks here).
  """
  counts: dict[int, list] = {}

  def stat(cat):
    return counts.setdefault(cat, [0, 0, 0, 0.0])

  gt = {s["id"]: s for s in gt_segments}
  pred = {s["id"]: s for s in pred_segments}
  # Pixel counts of every (gt id, pred id) pair present in the images.
  keys, inter = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64),
                          return_counts=True)
  pairs = {(int(k // OFFSET), int(k % OFFSET)): int(n) for k, n in zip(keys, inter)}
  pred_area = {p: 0 for p in pred}
  gt_png_area = {g: 0 for g in gt}
  for (g, p), n in pairs.items():
    if p in pred_area:
      pred_area[p] += n
    if g in gt_png_area:
      gt_png_area[g] += n

  def gt_area(g):
    return gt[g]["area"] if "area" in gt[g] else gt_png_area[g]

  gt_hit, pred_hit = set(), set()
  for (g, p), n in pairs.items():
    if g not in gt or p not in pred:
      continue
    if gt[g].get("iscrowd", 0) == 1 or gt[g]["category_id"] != pred[p]["category_id"]:
      continue
    union = pred_area[p] + gt_area(g) - n - pairs.get((VOID, p), 0)
    iou = n / union
    if iou > 0.5:
      s = stat(gt[g]["category_id"])
      s[0] += 1
      s[3] += iou
      gt_hit.add(g)
      pred_hit.add(p)

  crowd_of = {}  # category -> crowd GT segment id (the last one listed wins)
  for g, seg in gt.items():
    if g in gt_hit:
      continue
    if seg.get("iscrowd", 0) == 1:
      crowd_of[seg["category_id"]] = g
      continue
    stat(seg["category_id"])[2] += 1

  for p, seg in pred.items():
    if p in pred_hit:
      continue
    ignored = pairs.get((VOID, p), 0)
    if seg["category_id"] in crowd_of:
      ignored += pairs.get((crowd_of[seg["category_id"]], p), 0)
    if ignored / pred_area[p] > 0.5:
      continue
    stat(seg["category_id"])[1] += 1
  return counts


def summarize(counts: dict[int, list], categories: Sequence[dict]) -> dict[str, Any]:
  """Per-category counts -> panopticapi's result dict (All / Things / Stuff / per_class)."""
  results: dict[str, Any] = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    total = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    n = 0
    per_class = {}
    for cat in categories:
      if isthing is not None and (cat["isthing"] == 1) != isthing:
        continue
      tp, fp, fn, iou = counts.get(cat["id"], [0, 0, 0, 0.0])
      if tp + fp + fn == 0:
        per_class[cat["id"]] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        continue
      n += 1
      denom = tp + 0.5 * fp + 0.5 * fn
      per_class[cat["id"]] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
      for key in total:
        total[key] += per_class[cat["id"]][key]
    results[name] = {k: (v / n if n else 0.0) for k, v in total.items()}
    results[name]["n"] = n
    if name == "All":
      results["per_class"] = per_class
  return results


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str,
               pred_folder: str) -> dict[str, Any]:
  """Serial reference over files; same result structure as `rap_jax.metrics.pq.pq_compute`."""
  with open(gt_json_file) as f:
    gt_json = json.load(f)
  with open(pred_json_file) as f:
    pred_json = json.load(f)
  preds = {a["image_id"]: a for a in pred_json["annotations"]}
  counts: dict[int, list] = {}
  for gt_ann in gt_json["annotations"]:
    pred_ann = preds[gt_ann["image_id"]]
    image = image_counts(read_ids(os.path.join(gt_folder, gt_ann["file_name"])),
                         gt_ann["segments_info"],
                         read_ids(os.path.join(pred_folder, pred_ann["file_name"])),
                         pred_ann["segments_info"])
    for cat, (tp, fp, fn, iou) in image.items():
      s = counts.setdefault(cat, [0, 0, 0, 0.0])
      s[0] += tp
      s[1] += fp
      s[2] += fn
      s[3] += iou
  return summarize(counts, gt_json["categories"])


# ------------------------------------------------------------------------------------------------
# Synthetic data for tests and the benchmark.


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
  """[H, W] ids -> [H, W, 3] uint8 (SPEC §4.2)."""
  ids = ids.astype(np.uint32)
  return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def _paint_shape(lab: np.ndarray, value: int, rng: np.random.Generator, kind: str) -> None:
  """Draws one random ellipse / rectangle / thin line / speck of `value` into `lab` [H, W]."""
  h, w = lab.shape
  if kind == "line":  # 1-2 pixel wide, horizontal, vertical or diagonal
    width = int(rng.integers(1, 3))
    length = int(rng.integers(10, max(11, min(h, w) // 2)))
    y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
    direction = int(rng.integers(0, 3))
    t = np.arange(length)
    for o in range(width):
      if direction == 0:
        ys, xs = np.full(length, y + o), x + t
      elif direction == 1:
        ys, xs = y + t, np.full(length, x + o)
      else:
        ys, xs = y + t, x + t + o
      keep = (ys < h) & (xs < w)
      lab[ys[keep], xs[keep]] = value
    return
  if kind == "speck":
    y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
    lab[y:y + int(rng.integers(1, 4)), x:x + int(rng.integers(1, 4))] = value
    return
  ry = int(rng.integers(4, max(5, h // 4)))
  rx = int(rng.integers(4, max(5, w // 4)))
  cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
  y0, y1, x0, x1 = max(cy - ry, 0), min(cy + ry + 1, h), max(cx - rx, 0), min(cx + rx + 1, w)
  if kind == "rect":
    lab[y0:y1, x0:x1] = value
    return
  yy, xx = np.ogrid[y0:y1, x0:x1]
  inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  lab[y0:y1, x0:x1][inside] = value


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """[H, W] bool mask moved by (dy, dx), zero filled."""
  out = np.zeros_like(mask)
  h, w = mask.shape
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = mask[ys, xs]
  return out


def _labels_to_panoptic(lab: np.ndarray, lab_cat: list[int], lab_crowd: list[int],
                        rng: np.random.Generator, used: set[int]) -> tuple[np.ndarray, list[dict]]:
  """Label map [H, W] (0 = VOID, k = label k) -> (ids [H, W] uint32, segments with random ids)."""
  area = np.bincount(lab.ravel(), minlength=len(lab_cat))
  present = [k for k in range(1, len(lab_cat)) if area[k] > 0]
  lut = np.zeros(len(lab_cat), np.uint32)
  segments = []
  for k in present:
    sid = int(rng.integers(1, OFFSET))
    while sid in used:
      sid = int(rng.integers(1, OFFSET))
    used.add(sid)
    lut[k] = sid
    segments.append({"id": sid, "category_id": lab_cat[k], "iscrowd": lab_crowd[k],
                     "area": int(area[k])})
  order = rng.permutation(len(segments))  # JSON order is not id order
  return lut[lab], [segments[i] for i in order]


def synthetic_pair(rng: np.random.Generator, categories: Sequence[dict], height: int = 480,
                   width: int = 640, num_segments: int = 20,
                   odd_cases: bool = True) -> tuple[np.ndarray, list[dict], np.ndarray, list[dict]]:
  """One random GT / prediction pair exercising SPEC §8's cases.

  GT: stuff bands, things (ellipses, rectangles, 1-2 px lines, specks), crowd things, VOID holes.
  Prediction: GT segments shifted, dropped, split, merged, relabelled; extra segments on VOID, on
  crowd regions, of categories absent from GT. With `odd_cases`, sometimes a GT JSON segment absent
  from the PNG and a GT PNG id absent from the JSON (both legal for GT in panopticapi).

  Returns (gt_ids [H, W] uint32, gt_segments, pred_ids [H, W] uint32, pred_segments).
  """
  things = [c["id"] for c in categories if c["isthing"] == 1]
  stuff = [c["id"] for c in categories if c["isthing"] != 1]
  # A skewed subset, so that some categories never occur in GT and some occur often.
  things_img = list(rng.choice(things, size=min(len(things), int(rng.integers(2, 9))), replace=False))
  stuff_img = list(rng.choice(stuff, size=min(len(stuff), int(rng.integers(1, 5))), replace=False))

  lab = np.zeros((height, width), np.int32)
  lab_cat, lab_crowd = [0], [0]

  def new_label(cat, crowd=0):
    lab_cat.append(int(cat))
    lab_crowd.append(crowd)
    return len(lab_cat) - 1

  # Stuff bands (a category may repeat: two GT segments of one stuff class).
  n_bands = int(rng.integers(1, 5))
  vertical = rng.random() < 0.5
  extent = width if vertical else height
  edges = np.linspace(0, extent, n_bands + 1).astype(int)
  edges[1:-1] += rng.integers(-extent // (3 * n_bands), extent // (3 * n_bands) + 1, n_bands - 1)
  for b in range(n_bands):
    k = new_label(rng.choice(stuff_img))
    if vertical:
      lab[:, edges[b]:edges[b + 1]] = k
    else:
      lab[edges[b]:edges[b + 1]] = k
  n_things = max(num_segments - n_bands, 1)
  kinds = rng.choice(["ellipse", "rect", "line", "speck"], size=n_things, p=[0.5, 0.3, 0.12, 0.08])
  for kind in kinds:
    crowd = int(kind in ("ellipse", "rect") and rng.random() < 0.08)
    _paint_shape(lab, new_label(rng.choice(things_img), crowd), rng, str(kind))
  for _ in range(int(rng.integers(0, 4))):  # VOID holes and lines
    _paint_shape(lab, 0, rng, str(rng.choice(["rect", "line", "ellipse"])))

  # Prediction: start from GT labels, then perturb.
  plab = lab.copy()
  p_cat, p_crowd = list(lab_cat), [0] * len(lab_cat)
  if rng.random() < 0.5:  # predictions cover VOID with a stuff segment
    p_cat.append(int(rng.choice(stuff_img)))
    p_crowd.append(0)
    plab[lab == 0] = len(p_cat) - 1
  background = plab.copy()
  for k in range(1 + n_bands, len(lab_cat)):
    mask = lab == k
    u = rng.random()
    if u < 0.12:  # dropped: what was below shows through
      plab[mask & (plab == k)] = 0 if rng.random() < 0.3 else background[mask & (plab == k)]
    elif u < 0.6:  # shifted by a few pixels (IoU spread around 0.5)
      plab[mask & (plab == k)] = 0
      plab[_shifted(mask, int(rng.integers(-12, 13)), int(rng.integers(-12, 13)))] = k
    elif u < 0.7:  # split in two halves
      ys, xs = np.nonzero(mask & (plab == k))
      if len(ys):
        p_cat.append(p_cat[k])
        p_crowd.append(0)
        half = xs > np.median(xs)
        plab[ys[half], xs[half]] = len(p_cat) - 1
    elif u < 0.78:  # wrong category
      p_cat[k] = int(rng.choice(things))
    elif u < 0.85:  # merged with another label of the same category
      same = [j for j in range(1, len(lab_cat)) if j != k and p_cat[j] == p_cat[k]]
      if same:
        plab[plab == same[0]] = k
  for _ in range(int(rng.integers(0, 5))):  # extra segments, any category (some absent in GT)
    p_cat.append(int(rng.choice(things + stuff)))
    p_crowd.append(0)
    _paint_shape(plab, len(p_cat) - 1, rng, str(rng.choice(["ellipse", "rect", "line"])))
  crowd_labels = [k for k in range(len(lab_cat)) if lab_crowd[k]]
  if crowd_labels and rng.random() < 0.7:  # a prediction inside a crowd region (ignored FP)
    k = int(rng.choice(crowd_labels))
    p_cat.append(lab_cat[k])
    p_crowd.append(0)
    ys, xs = np.nonzero(lab == k)
    if len(ys):
      sel = rng.random(len(ys)) < 0.9
      plab[ys[sel], xs[sel]] = len(p_cat) - 1

  used: set[int] = set()
  gt_ids, gt_segments = _labels_to_panoptic(lab, lab_cat, lab_crowd, rng, used)
  pred_ids, pred_segments = _labels_to_panoptic(plab, p_cat, p_crowd, rng, set())
  for s in pred_segments:
    del s["iscrowd"], s["area"]
  if odd_cases and rng.random() < 0.15:  # GT JSON segment that is not in the PNG
    gt_segments.append({"id": OFFSET - 1 - int(rng.integers(0, 1000)),
                        "category_id": int(rng.choice(things_img)),
                        "iscrowd": int(rng.random() < 0.3), "area": int(rng.integers(1, 500))})
  if odd_cases and rng.random() < 0.15 and len(gt_segments) > 2:  # GT PNG id not in the JSON
    gt_segments.pop(int(rng.integers(0, len(gt_segments))))
  return gt_ids, gt_segments, pred_ids, pred_segments


def _write_one(args: tuple) -> tuple[dict, dict]:
  folder, index, seed, categories, height, width, num_segments, odd_cases = args
  rng = np.random.default_rng([seed, index])
  gt_ids, gt_segments, pred_ids, pred_segments = synthetic_pair(
      rng, categories, height, width, num_segments, odd_cases)
  name = f"{index:012d}.png"
  Image.fromarray(ids_to_rgb(gt_ids)).save(os.path.join(folder, "gt", name))
  Image.fromarray(ids_to_rgb(pred_ids)).save(os.path.join(folder, "pred", name))
  image_id = index + 1
  return ({"image_id": image_id, "file_name": name, "segments_info": gt_segments},
          {"image_id": image_id, "file_name": name, "segments_info": pred_segments})


def write_dataset(folder: str, num_images: int, categories: Sequence[dict], seed: int = 0,
                  height: int = 480, width: int = 640, num_segments: int = 20,
                  odd_cases: bool = True, workers: int = 1) -> dict[str, str]:
  """Writes gt.json, pred.json, gt/*.png, pred/*.png under `folder`; returns their paths.

  With workers > 1 (and >= 64 images) a spawn pool is used: call from under ``__main__``.
  """
  os.makedirs(os.path.join(folder, "gt"), exist_ok=True)
  os.makedirs(os.path.join(folder, "pred"), exist_ok=True)
  cats = [dict(c) for c in categories]
  jobs = [(folder, i, seed, cats, height, width, num_segments, odd_cases)
          for i in range(num_images)]
  if workers > 1 and num_images >= 64:
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      pairs = pool.map(_write_one, jobs, chunksize=16)
  else:
    pairs = [_write_one(j) for j in jobs]
  gt_json = {"images": [{"id": g["image_id"], "file_name": g["file_name"].replace(".png", ".jpg"),
                         "height": height, "width": width} for g, _ in pairs],
             "annotations": [g for g, _ in pairs], "categories": cats}
  pred_json = {"annotations": [p for _, p in pairs], "categories": cats}
  paths = {"gt_json": os.path.join(folder, "gt.json"), "pred_json": os.path.join(folder, "pred.json"),
           "gt_folder": os.path.join(folder, "gt"), "pred_folder": os.path.join(folder, "pred")}
  with open(paths["gt_json"], "w") as f:
    json.dump(gt_json, f)
  with open(paths["pred_json"], "w") as f:
    json.dump(pred_json, f)
  return paths
