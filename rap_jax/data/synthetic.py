"""The built-in synthetic dataset: a deterministic generator of a complete COCO-style panoptic set.

``generate(data_dir, num_train=..., num_val=..., seed=...)`` writes, for each split ``s`` in
``train2017`` and ``val2017``, the layout of the original's ``datasets/coco`` (README):

  images/<s>/<image_id:012d>.png           RGB image (PNG: lossless and reproducible)
  annotations/instances_<s>.json           COCO instances: AMODAL masks as polygons (crowd:
                                           uncompressed RLE), bbox/area from pycocotools, the 80
                                           thing categories
  annotations/instances_<s>_with_relation.json   the same + RAP's ``overlap`` field (SPEC §7.2)
  annotations/panoptic_<s>.json + panoptic_<s>/<image_id:012d>.png   COCO panoptic,
                                           id = R + 256 G + 65536 B; ``segments_info`` lists the
                                           things in annotation order, then stuff by category id
  annotations/semantic_<s>/*.png           panoptic-FPN labels (0 void, 1..53 stuff, 54 thing)
  annotations/relations_<s>.json           ground truth ``{image_id: {back_id: [front_ids]}}`` for
                                           EVERY pair of non-crowd instances whose amodal masks
                                           share a pixel (front = smaller depth)
  annotations/depths_<s>.json              ``{image_id: {annotation_id: depth}}`` (crowd too)
  synthetic_config.json                    the generator's arguments (a completeness stamp)

Scenes (``SyntheticConfig``): 3-5 stuff regions (real COCO stuff ids; wavy horizontal bands, one band sometimes split
vertically), each with its own texture; sometimes a thin VOID strip along a band boundary; thing
instances of 11 real COCO thing categories (``synthetic_shapes.THING_STYLES``: person = striped
capsule with a head, car = body + cabin + wheels, cup with handle, ...) at random distinct
depths; each image uses 1-3 categories, so same-category occlusions are common; instances are
placed next to each other, so occlusions are frequent; sometimes a crowd region (iscrowd 1, a group
of small persons, always the farthest object, never in a relation). With ``inset_prob`` > 0 an
instance is sometimes placed in front of a larger one, mostly inside its box: the far object stays
the more visible (often the more confident) one, so placing instances in score order gets such
pairs wrong and depth order matters (what RAP's relation head fixes). The visible panoptic masks
are the amodal masks painted far to near.

One rasterisation everywhere: a polygon's pixels are those of ``cv2.fillPoly`` on the coordinates
truncated to int (SPEC §7.1 Q5, ``relations.fillpoly_mask``), so the panoptic masks, the overlap
ratios and ``d_k`` (pixels an instance loses) seen by ``scripts/retrieve_relation.py`` are exact.
The instances JSON keeps COCO's conventions (``bbox``/``area`` by pycocotools on the polygons).

Scenes are built instance by instance; an instance is kept only if the whole scene stays valid:
every object keeps >= ``min_visible`` of its pixels, nearest-bbox matching (SPEC §7.1 Q1/Q2) pairs
every panoptic segment with its own instance, and for every pair whose overlap passes ``ratio``
the front instance lost strictly fewer pixels than the back one. Hence the original's retrieval +
refinement reproduce ``instances_<s>_with_relation.json`` byte for byte (tested): its ``overlap``
lists are the ground-truth relations whose overlap passes the ratio (fronts in annotation order).

Determinism: image ``i`` of split ``s`` draws from ``Generator(PCG64(SeedSequence([seed, s, i])))``,
so images are independent of each other, of the split sizes and of ``workers``; ``val_seed``
(default: ``seed``) replaces ``seed`` for the validation split.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from rap_jax.data import categories as cats
from rap_jax.data import prep, prep_io, relations
from rap_jax.data import synthetic_shapes as shapes

GENERATOR_VERSION = 1
SPLITS = {"train2017": 0, "val2017": 1}
# image id = base + index + 1; annotation id = image id * 100 + k (k = 1..99)
_IMAGE_ID_BASE = {"train2017": 0, "val2017": 1_000_000}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Arguments of :func:`generate` that determine the files (``workers`` does not)."""
  num_train: int = 200
  num_val: int = 50
  image_size: tuple[int, int] = (256, 256)  # (height, width)
  seed: int = 0
  # the validation split's seed (-1: ``seed``): another seed gives a validation split drawn from
  # a stream the training split never used (configs/synthetic_rap.py)
  val_seed: int = -1
  min_instances: int = 2
  max_instances: int = 6
  crowd_prob: float = 0.05  # per image
  void_prob: float = 0.25  # per image: a thin unlabeled strip along a stuff boundary
  near_prob: float = 0.8  # an instance is placed next to an existing one
  # an instance is placed IN FRONT of a larger existing one, mostly inside its box: the near object
  # is small and partly covers the far one, so the far one is often the more confident detection
  # and score order (the heuristic fusion) puts the pair the wrong way round; 0 = never (version 1)
  inset_prob: float = 0.0
  min_visible: float = 0.3  # fraction of its amodal pixels every object keeps
  ratio: float = 0.2  # overlap ratio of the relation retrieval (SPEC §7.1)
  version: int = GENERATOR_VERSION

  def __post_init__(self):
    if not 1 <= self.min_instances <= self.max_instances <= 98:
      raise ValueError("need 1 <= min_instances <= max_instances <= 98")
    h, w = self.image_size
    if h < 32 or w < 32:
      raise ValueError(f"image_size {self.image_size} too small (>= 32x32)")
    if self.val_seed < -1:
      raise ValueError(f"val_seed must be >= 0 or -1 (the training seed), got {self.val_seed}")
    if self.num_train < 0 or self.num_val < 0 or max(self.num_train, self.num_val) >= 1_000_000:
      raise ValueError("num_train / num_val must be in 0..999,999")

  def split_seed(self, split: str) -> int:
    """The seed that split ``split`` draws from."""
    return self.val_seed if split == "val2017" and self.val_seed >= 0 else self.seed

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["image_size"] = list(self.image_size)
    if self.val_seed < 0:  # the stamp of datasets made before val_seed existed
      del d["val_seed"]
    return d


@dataclasses.dataclass
class _Object:
  """One instance (or crowd region) of a scene."""
  category_id: int
  polygons: list[list[float]]  # COCO polygons (empty for a crowd)
  tags: list[int]  # per polygon: 0 body, 1/2 accent
  depth: float
  iscrowd: int
  mask: np.ndarray  # [H, W] uint8 amodal, fillPoly rasterisation
  area: int  # pixels of ``mask``
  segmentation: Any  # what the JSON stores
  coco_bbox: list[float]  # pycocotools toBbox of ``segmentation``
  coco_area: float
  color: np.ndarray  # [3] base colour


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS[split], index])))


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
  """COCO uncompressed RLE (column-major runs, zeros first) of an [H, W] 0/1 mask."""
  flat = np.asarray(mask, dtype=np.int8).ravel(order="F")
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0] == 1:
    counts = [0] + counts
  return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _coco_bbox_area(segmentation: Any, h: int, w: int) -> tuple[list[float], float]:
  rles = mask_utils.frPyObjects(segmentation, h, w)
  rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
  return [float(v) for v in mask_utils.toBbox(rle)], float(mask_utils.area(rle))


def _make_object(category_id: int, polys: list[np.ndarray], tags: list[int], depth: float,
                 color: np.ndarray, h: int, w: int, iscrowd: int = 0) -> _Object | None:
  """Rounds, rasterises and measures an object; None if it is (nearly) empty."""
  coco_polys, kept_tags = [], []
  for poly, tag in zip(polys, tags):
    poly = np.round(shapes.clip_polygon(poly, w - 1, h - 1), 2)
    if len(poly) < 3:
      continue
    x, y = poly[:, 0], poly[:, 1]
    if 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) < 1.0:
      continue
    coco_polys.append([float(v) for v in poly.ravel()])
    kept_tags.append(tag)
  if not coco_polys:
    return None
  mask = relations.fillpoly_mask(coco_polys, h, w)
  area = int(np.count_nonzero(mask))
  if area < 64:
    return None
  seg: Any = coco_polys
  if iscrowd:
    seg, coco_polys = uncompressed_rle(mask), []
  bbox, coco_area = _coco_bbox_area(seg, h, w)
  if coco_area <= 0:
    return None
  return _Object(category_id, coco_polys, kept_tags, depth, iscrowd, mask, area, seg, bbox,
                 coco_area, color)


def _sample_thing(rng: np.random.Generator, cfg: SyntheticConfig, scene: list[_Object],
                  categories: list[int]) -> _Object | None:
  h, w = cfg.image_size
  cid = int(categories[rng.integers(len(categories))])
  style = shapes.THING_STYLES[cid]
  size = rng.uniform(*style.size) * min(h, w)
  parts = style.outline(rng)
  flip = -1.0 if rng.random() < 0.5 else 1.0
  things = [o for o in scene if not o.iscrowd]
  depth_limit = None  # an inset instance must be nearer than the one it covers
  if things and cfg.inset_prob > 0 and rng.random() < cfg.inset_prob:
    other = things[rng.integers(len(things))]
    x0, y0, bw, bh = other.coco_bbox
    size = rng.uniform(0.45, 0.7) * max(bw, bh)
    centre = np.array([x0 + bw / 2, y0 + bh / 2]) + rng.uniform(-0.3, 0.3, 2) * np.array([bw, bh])
    depth_limit = other.depth
  elif things and rng.random() < cfg.near_prob:
    other = things[rng.integers(len(things))]
    x0, y0, bw, bh = other.coco_bbox
    shift = rng.uniform(-0.45, 0.45, 2) * (size + max(bw, bh)) / 2
    centre = np.array([x0 + bw / 2, y0 + bh / 2]) + shift
  else:
    centre = rng.uniform(0.15, 0.85, 2) * np.array([w, h])
  polys = [p.poly * np.array([flip, 1.0]) * size + centre for p in parts]
  depth = round(float(rng.uniform(1.0, depth_limit or 100.0)), 3)
  if (depth_limit is not None and depth >= depth_limit) or any(o.depth == depth for o in scene):
    return None
  color = np.array(style.colors[rng.integers(len(style.colors))], dtype=np.float32)
  color = np.clip(color * rng.uniform(0.85, 1.15), 0, 255)
  return _make_object(cid, polys, [p.tag for p in parts], depth, color, h, w)


def _sample_crowd(rng: np.random.Generator, cfg: SyntheticConfig) -> _Object | None:
  """A group of small persons as one crowd region, the farthest object of the image."""
  h, w = cfg.image_size
  rw, rh = rng.uniform(0.25, 0.4) * w, rng.uniform(0.2, 0.3) * h
  x0, y0 = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
  polys, tags = [], []
  for _ in range(int(rng.integers(4, 9))):
    size = rng.uniform(0.12, 0.18) * min(h, w)
    c = np.array([rng.uniform(x0, x0 + rw), rng.uniform(y0, y0 + rh)])
    for p in shapes.THING_STYLES[1].outline(rng):
      polys.append(p.poly * size + c)
      tags.append(p.tag)
  color = np.array(shapes.THING_STYLES[1].colors[rng.integers(4)], dtype=np.float32)
  return _make_object(1, polys, tags, 1000.0, color, h, w, iscrowd=1)


def _visible(scene: list[_Object], shape: tuple[int, int]) -> np.ndarray:
  """[H, W] int32 index of the nearest object at each pixel (-1 = none): painted far to near."""
  owner = np.full(shape, -1, dtype=np.int32)
  for k in sorted(range(len(scene)), key=lambda k: -scene[k].depth):
    owner[scene[k].mask > 0] = k
  return owner


def _pixel_bbox(m: np.ndarray) -> list[int]:
  """Integer [x, y, w, h] of a non-empty mask (w = x_max - x_min + 1, as panopticapi)."""
  ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
  return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _scene_valid(scene: list[_Object], cfg: SyntheticConfig) -> bool:
  """The three conditions of the module docstring."""
  owner = _visible(scene, cfg.image_size)
  visible = np.bincount(owner.ravel() + 1, minlength=len(scene) + 1)[1:]
  for o, v in zip(scene, visible):
    if v < max(32, cfg.min_visible * o.area):
      return False
  segs = [{"id": k, "bbox": _pixel_bbox(owner == k)} for k in range(len(scene))]
  insts = [{"id": k, "bbox": o.coco_bbox} for k, o in enumerate(scene)]
  seg_to_inst, _ = relations.match_segments(segs, insts)
  if seg_to_inst != {k: k for k in range(len(scene))}:
    return False
  lost = [o.area - int(v) for o, v in zip(scene, visible)]
  for i, a in enumerate(scene):
    for j in range(i + 1, len(scene)):
      b = scene[j]
      if a.iscrowd or b.iscrowd:
        continue
      ov = int(np.count_nonzero(a.mask & b.mask))
      if ov and (ov / a.area > cfg.ratio or ov / b.area > cfg.ratio):
        front, back = (i, j) if a.depth < b.depth else (j, i)
        if not lost[front] < lost[back]:
          return False
  return True


def _sample_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> list[_Object]:
  n_cats = int(rng.choice([1, 2, 2, 3]))
  categories = sorted(rng.choice(sorted(shapes.THING_STYLES), n_cats, replace=False).tolist())
  target = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
  things: list[_Object] = []
  crowd = _sample_crowd(rng, cfg) if rng.random() < cfg.crowd_prob else None
  for _ in range(target):
    for _attempt in range(30):
      obj = _sample_thing(rng, cfg, things, categories)
      if obj is not None and _scene_valid(things + [obj] + ([crowd] if crowd else []), cfg):
        things.append(obj)
        break
  return things + ([crowd] if crowd is not None else [])


def _stuff_layout(rng: np.random.Generator,
                  cfg: SyntheticConfig) -> tuple[np.ndarray, list[int], np.ndarray]:
  """([H, W] region index, region COCO stuff ids, [H, W] bool void)."""
  h, w = cfg.image_size
  n_regions = int(rng.integers(3, 6))
  split = rng.random() < 0.5
  n_bands = n_regions - 1 if split else n_regions
  stuff = [int(c) for c in rng.choice(sorted(shapes.STUFF_TEXTURES), n_regions, replace=False)]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  region = np.zeros((h, w), dtype=np.int32)
  boundaries = []
  for k in range(1, n_bands):
    base = h * k / n_bands + rng.uniform(-0.08, 0.08) * h
    amp, freq, phase = rng.uniform(2, 0.06 * h), rng.uniform(0.01, 0.06), rng.uniform(0, 6.3)
    yk = base + amp * np.sin(xx[0] * freq + phase)  # [W] boundary row per column
    boundaries.append(yk)
    region += (yy >= yk[None, :]).astype(np.int32)
  if split:  # one band split left/right, the right part becomes the last region
    band = int(rng.integers(n_bands))
    xs = w * rng.uniform(0.3, 0.7) + 0.05 * w * np.sin(yy[:, 0] * rng.uniform(0.02, 0.08))
    region[(region == band) & (xx >= xs[:, None])] = n_regions - 1
  void = np.zeros((h, w), dtype=bool)
  if boundaries and rng.random() < cfg.void_prob:
    yk = boundaries[int(rng.integers(len(boundaries)))]
    void = np.abs(yy - yk[None, :]) < rng.uniform(1.0, 3.0)
  return region, stuff, void


def _render(rng: np.random.Generator, cfg: SyntheticConfig, region: np.ndarray, stuff: list[int],
            scene: list[_Object]) -> np.ndarray:
  h, w = cfg.image_size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.zeros((h, w, 3), dtype=np.float32)
  for k, cid in enumerate(stuff):
    m = region == k
    if m.any():
      img[m] = shapes.STUFF_TEXTURES[cid](rng, yy, xx)[m]
  for obj in sorted(scene, key=lambda o: -o.depth):
    style = shapes.THING_STYLES[obj.category_id]
    x0, y0, bw, bh = _pixel_bbox(obj.mask)
    crop = obj.mask[y0:y0 + bh, x0:x0 + bw] > 0
    tex = shapes.thing_appearance(style, obj.color, (bh, bw), x0, y0, rng)
    for poly, tag in zip(obj.polygons, obj.tags):
      if tag:
        part = relations.fillpoly_mask([poly], h, w)[y0:y0 + bh, x0:x0 + bw] > 0
        tex[part] = np.asarray(style.accents[tag - 1], dtype=np.float32)
    img[y0:y0 + bh, x0:x0 + bw][crop] = tex[crop]
  img += rng.normal(0, 3.0, img.shape).astype(np.float32)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _segment_id(color: tuple[int, int, int], taken: set[int], rng: np.random.Generator) -> int:
  """Category colour the first time, then colour + randint(-30, 30) per channel (panopticapi)."""
  sid = int(prep_io.rgb2id(np.array(color, dtype=np.uint8)))
  while sid in taken:
    jitter = np.clip(np.array(color) + rng.integers(-30, 31, 3), 0, 255).astype(np.uint8)
    sid = int(prep_io.rgb2id(jitter))
  taken.add(sid)
  return sid


def make_image(cfg: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
  """Everything about one image (arrays and JSON pieces); pure function of its arguments."""
  rng = _rng(cfg.split_seed(split), split, index)
  h, w = cfg.image_size
  image_id = _IMAGE_ID_BASE[split] + index + 1
  name = f"{image_id:012d}"
  region, stuff, void = _stuff_layout(rng, cfg)
  scene = _sample_scene(rng, cfg)
  image = _render(rng, cfg, region, stuff, scene)
  owner = _visible(scene, (h, w))

  ann_ids = [image_id * 100 + k + 1 for k in range(len(scene))]
  annotations = [{"id": aid, "image_id": image_id, "category_id": o.category_id,
                  "segmentation": o.segmentation, "area": o.coco_area, "bbox": o.coco_bbox,
                  "iscrowd": o.iscrowd} for aid, o in zip(ann_ids, scene)]

  ids = np.zeros((h, w), dtype=np.uint32)
  taken: set[int] = {0}
  segments = []
  for k, (aid, o) in enumerate(zip(ann_ids, scene)):
    sid = _segment_id(cats.category(o.category_id).color, taken, rng)
    ids[owner == k] = sid
    segments.append({"id": sid, "category_id": o.category_id, "iscrowd": o.iscrowd})
  for k, cid in sorted(enumerate(stuff), key=lambda kc: kc[1]):
    m = (region == k) & ~void & (owner < 0)
    if m.any():
      sid = _segment_id(cats.category(cid).color, taken, rng)
      ids[m] = sid
      segments.append({"id": sid, "category_id": cid, "iscrowd": 0})
  for seg in segments:
    m = ids == seg["id"]
    seg["bbox"] = _pixel_bbox(m)
    seg["area"] = int(np.count_nonzero(m))

  # Ground truth: every overlapping non-crowd pair (i < j, annotation order); ratio-passing subset.
  gt: dict[int, list[int]] = {}
  overlap = {aid: [] for aid in ann_ids}
  for i in range(len(scene)):
    for j in range(i + 1, len(scene)):
      a, b = scene[i], scene[j]
      if a.iscrowd or b.iscrowd:
        continue
      ov = int(np.count_nonzero(a.mask & b.mask))
      if not ov:
        continue
      front, back = (i, j) if a.depth < b.depth else (j, i)
      gt.setdefault(ann_ids[back], []).append(ann_ids[front])
      if ov / a.area > cfg.ratio or ov / b.area > cfg.ratio:
        overlap[ann_ids[back]].append(ann_ids[front])

  return {
      "name": name, "image": image, "ids": ids,
      "semantic": prep.semantic_labels(ids, segments, "pfpn", where=name),
      "image_info": {"id": image_id, "file_name": f"{name}.png", "height": h, "width": w},
      "annotations": annotations, "overlap": overlap,
      "panoptic": {"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments},
      "relations": gt, "depths": {aid: o.depth for aid, o in zip(ann_ids, scene)},
  }


def _write_image(args) -> dict[str, Any]:
  cfg, split, index, root = args
  r = make_image(cfg, split, index)
  root = pathlib.Path(root)
  fname = r["image_info"]["file_name"]
  prep_io.write_rgb_png(root / "images" / split / fname, r["image"])
  prep_io.write_rgb_png(root / "annotations" / f"panoptic_{split}" / fname,
                        prep_io.id2rgb(r["ids"]))
  prep_io.write_label_png(root / "annotations" / f"semantic_{split}" / fname, r["semantic"])
  for key in ("image", "ids", "semantic"):
    del r[key]
  return r


def _png_folders(split: str) -> tuple[str, str, str]:
  return f"images/{split}", f"annotations/panoptic_{split}", f"annotations/semantic_{split}"


def split_files(split: str) -> dict[str, str]:
  """Paths (relative to the data dir) of one split's JSON files."""
  return {"instances": f"annotations/instances_{split}.json",
          "with_relation": f"annotations/instances_{split}_with_relation.json",
          "panoptic": f"annotations/panoptic_{split}.json",
          "relations": f"annotations/relations_{split}.json",
          "depths": f"annotations/depths_{split}.json"}


def generate(data_dir: prep_io.PathLike, *, workers: int = 1, progress: bool = False,
             **config: Any) -> dict[str, Any]:
  """Writes the synthetic dataset under ``data_dir``; returns a summary (counts, seconds).

  Args:
    data_dir: output folder (created).
    workers: processes; the files do not depend on it.
    progress: tqdm bars.
    **config: fields of :class:`SyntheticConfig` (num_train, num_val, image_size, seed, ...).
  """
  cfg = SyntheticConfig(**{k: tuple(v) if k == "image_size" else v for k, v in config.items()})
  root = pathlib.Path(data_dir)
  t0 = time.perf_counter()
  summary: dict[str, Any] = {}
  for split, num in (("train2017", cfg.num_train), ("val2017", cfg.num_val)):
    for sub in _png_folders(split):
      (root / sub).mkdir(parents=True, exist_ok=True)
    results = prep_io.ordered_map(_write_image, [(cfg, split, i, str(root)) for i in range(num)],
                                  workers, progress, f"synthetic {split}")
    info = {"description": f"rap_jax synthetic dataset ({split})", "version": str(cfg.version),
            "seed": cfg.split_seed(split)}
    instances = {"info": info, "licenses": [], "images": [r["image_info"] for r in results],
                 "annotations": [a for r in results for a in r["annotations"]],
                 "categories": cats.thing_categories_json()}
    files = split_files(split)
    prep_io.dump_json(instances, root / files["instances"])
    overlap = {aid: fr for r in results for aid, fr in r["overlap"].items()}
    for ann in instances["annotations"]:
      ann["overlap"] = overlap[ann["id"]]
    prep_io.dump_json(instances, root / files["with_relation"])
    panoptic = {"info": info, "licenses": [], "images": [r["image_info"] for r in results],
                "annotations": [r["panoptic"] for r in results],
                "categories": cats.categories_json()}
    prep_io.dump_json(panoptic, root / files["panoptic"])
    gt = {r["image_info"]["id"]: r["relations"] for r in results}
    prep_io.dump_json(relations.relations_to_json(gt), root / files["relations"])
    prep_io.dump_json({str(r["image_info"]["id"]): {str(a): d for a, d in r["depths"].items()}
                       for r in results}, root / files["depths"])
    anns = instances["annotations"]
    summary[split] = {
        "images": num, "instances": sum(1 for a in anns if not a["iscrowd"]),
        "crowd": sum(a["iscrowd"] for a in anns),
        "overlapping_pairs": sum(len(f) for r in results for f in r["relations"].values()),
        "relations_ratio": sum(len(a["overlap"]) for a in anns),
        "same_category_pairs": _same_category_pairs(results),
    }
  prep_io.dump_json(cfg.to_json(), root / "synthetic_config.json")
  summary["seconds"] = round(time.perf_counter() - t0, 2)
  return summary


def _same_category_pairs(results: list[dict[str, Any]]) -> int:
  n = 0
  for r in results:
    cat = {a["id"]: a["category_id"] for a in r["annotations"]}
    n += sum(cat[b] == cat[f] for b, fr in r["relations"].items() for f in fr)
  return n


def is_complete(data_dir: prep_io.PathLike, **config: Any) -> bool:
  """True if ``data_dir`` holds a complete dataset generated with exactly this configuration."""
  root = pathlib.Path(data_dir)
  cfg = SyntheticConfig(**{k: tuple(v) if k == "image_size" else v for k, v in config.items()})
  stamp = root / "synthetic_config.json"
  try:
    if json.loads(stamp.read_text()) != cfg.to_json():
      return False
  except (OSError, ValueError):
    return False
  for split, num in (("train2017", cfg.num_train), ("val2017", cfg.num_val)):
    if not all((root / f).is_file() for f in split_files(split).values()):
      return False
    for sub in _png_folders(split):
      if len(list((root / sub).glob("*.png"))) != num:
        return False
  return True
