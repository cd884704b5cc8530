"""COCO panoptic outputs on the host: segment ids, PNG/JSON encoding and the predict-mode writers.

SPEC §4.2-§4.3. A fusion (rap_jax.ops.fusion) returns, per image, a map of segment slots and a
fixed-size segment table; here the slots become COCO panoptic segment ids drawn from an
`IdGenerator` (panopticapi's, shared by all images of a run), the map becomes an RGB PNG with
`id = R + 256 G + 256^2 B`, and the table becomes `segments_info` entries

    {"id", "category_id", "area", "bbox": [x, y, w, h], "iscrowd": 0}

(area and bbox of the pixel set in the PNG; the original wrote only id and category_id).

Files written by predict mode (`PanopticWriter`):

    <workdir>/panoptic/<stem>.png     one per image, written atomically (tmp file + rename)
    <workdir>/panoptic.json           {"annotations": [...], "categories": [133 dicts]}
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from rap_jax.data import categories as cats

# Default seed of the IdGenerator's legacy numpy RandomState. The original never seeds (thing ids
# differ run to run); the fixtures were produced after numpy.random.seed(0), so seed 0 replays them.
DEFAULT_ID_SEED = 0


def rgb2id(color: Any) -> Any:
  """panopticapi `rgb2id`: [..., 3] uint8 image -> [...] int32 ids, or an (r, g, b) -> int."""
  if isinstance(color, np.ndarray) and color.ndim == 3:
    if color.shape[-1] != 3:
      raise ValueError(f"rgb2id expects an [H, W, 3] image, got shape {color.shape}")
    color = color.astype(np.int32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]
  return int(color[0]) + 256 * int(color[1]) + 256 * 256 * int(color[2])


def id2rgb(id_map: Any) -> Any:
  """panopticapi `id2rgb`: [H, W] ids -> [H, W, 3] uint8, or an int -> [r, g, b]."""
  if isinstance(id_map, np.ndarray):
    if id_map.size and (id_map.min() < 0 or id_map.max() >= 256 ** 3):
      raise ValueError("panoptic ids must be in [0, 2^24)")
    ids = id_map.astype(np.int64)
    rgb = np.zeros(id_map.shape + (3,), np.uint8)
    for c in range(3):
      rgb[..., c] = ids % 256
      ids //= 256
    return rgb
  value = int(id_map)
  color = []
  for _ in range(3):
    color.append(value % 256)
    value //= 256
  return color


class IdGenerator:
  """panopticapi's `IdGenerator` (SPEC §4.3), with its RNG made seedable.

  One generator per run, shared by all images: stuff categories always get their fixed colour;
  a thing category gets its base colour the first time, afterwards `base + randint(-30, 31, 3)`
  clipped to [0, 255], redrawn until the colour is not taken. Initial taken set = {0} plus the 53
  stuff colours (the original's `set([0, 0, 0])` is `{0}`).

  seed: seed of a private legacy `numpy.random.RandomState` (same stream as the global
    `numpy.random.seed(seed)` the fixtures used); None draws from numpy's global RNG like the
    original.
  """

  def __init__(self, seed: int | None = DEFAULT_ID_SEED,
               categories: Mapping[int, Mapping[str, Any]] | None = None):
    if categories is None:
      categories = {c.id: {"isthing": c.isthing, "color": list(c.color)} for c in cats.CATEGORIES}
    self.categories = categories
    self.rng = np.random if seed is None else np.random.RandomState(seed)
    self.taken_colors: set = {0}
    for category in categories.values():
      if category["isthing"] == 0:
        self.taken_colors.add(tuple(category["color"]))

  def get_color(self, category_id: int) -> tuple[int, int, int]:
    try:
      category = self.categories[int(category_id)]
    except KeyError:
      raise KeyError(f"IdGenerator: unknown category id {category_id}") from None
    base = tuple(int(v) for v in category["color"])
    if category["isthing"] == 0:
      return base
    if base not in self.taken_colors:
      self.taken_colors.add(base)
      return base
    while True:
      drawn = np.asarray(base) + self.rng.randint(low=-30, high=31, size=3)
      color = tuple(int(v) for v in np.clip(drawn, 0, 255))
      if color not in self.taken_colors:
        self.taken_colors.add(color)
        return color

  def get_id(self, category_id: int) -> int:
    return rgb2id(self.get_color(category_id))


def _host(x: Any) -> np.ndarray:
  return np.asarray(x)


def segment_boxes(segment_map: np.ndarray, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
  """Areas and COCO boxes of the pixel sets of a slot map.

  segment_map: [H, W] int, 0 = unassigned, s + 1 = slot s (s < num_segments).
  Returns (area [num_segments] int64, bbox [num_segments, 4] int64 as x, y, w, h; zeros for empty
  slots) of each slot's pixels: w = x_max - x_min + 1 (panopticapi's convention).
  """
  h, w = segment_map.shape
  n = num_segments + 1
  flat = segment_map.astype(np.int64)
  area = np.bincount(flat.ravel(), minlength=n)[1:n]
  # [H, n] / [W, n]: does row y / column x hold a pixel of slot s?
  rows = np.bincount((flat + n * np.arange(h)[:, None]).ravel(), minlength=h * n).reshape(h, n) > 0
  cols = np.bincount((flat + n * np.arange(w)[None, :]).ravel(), minlength=w * n).reshape(w, n) > 0
  rows, cols = rows[:, 1:], cols[:, 1:]
  y0 = rows.argmax(0)
  y1 = h - 1 - rows[::-1].argmax(0)
  x0 = cols.argmax(0)
  x1 = w - 1 - cols[::-1].argmax(0)
  bbox = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
  bbox[area == 0] = 0
  return area, bbox


def fusion_to_panoptic(result: Any, image_hw: Sequence[int],
                       id_generator: IdGenerator) -> tuple[np.ndarray, list[dict]]:
  """One image's fusion output -> (PNG content, segments_info), drawing ids in segment order.

  result: a rap_jax.ops.fusion.FusionResult of ONE image (device or numpy arrays):
    segment_map [Hc, Wc] (canvas), segment_category / segment_valid [S], valid segments first.
  image_hw: (H, W) of the original image; the map is cropped to it. Every segment pixel must lie
    inside (the caller zeroes masks and semantic outside the image), else ValueError.
  Returns png_rgb [H, W, 3] uint8 and segments_info in the original's order (things by score,
    then stuff by channel), each {"id", "category_id", "area", "bbox": [x, y, w, h], "iscrowd": 0}.
  """
  segment_map = _host(result.segment_map)
  category = _host(result.segment_category)
  seg_valid = _host(result.segment_valid)
  if segment_map.ndim != 2:
    raise ValueError(f"fusion_to_panoptic takes one image; segment_map has shape "
                     f"{segment_map.shape} (index the batch first, e.g. result[i])")
  h, w = (int(v) for v in image_hw)
  if not (0 < h <= segment_map.shape[0] and 0 < w <= segment_map.shape[1]):
    raise ValueError(f"image size {(h, w)} does not fit the fusion canvas {segment_map.shape}")
  num = int(seg_valid.sum())
  if not seg_valid[:num].all():
    raise ValueError("segment_valid must list the valid segments first")
  crop = segment_map[:h, :w]
  if np.count_nonzero(crop) != np.count_nonzero(segment_map):
    raise ValueError("segments have pixels outside the image: zero the masks and the semantic map "
                     f"outside the true image size {(h, w)} before fusing")
  if crop.max(initial=0) > num:
    raise ValueError("segment_map refers to segment slots that are not valid")
  area, bbox = segment_boxes(crop, num)
  if hasattr(result, "segment_area"):
    dev_area = _host(result.segment_area)[:num]
    if not np.array_equal(dev_area, area):
      raise ValueError(f"segment areas of the map {area.tolist()} differ from the fusion's "
                       f"table {dev_area.tolist()}")
  # Ids in the original's draw order: every accepted thing (also those the refinement emptied
  # later: their ids stay consumed), then the stuff segments.
  ids = np.zeros(num + 1, np.int64)
  is_thing = _host(result.segment_is_thing)[:num]
  accepted = int(_host(result.accepted_valid).sum())
  for c, s in zip(_host(result.accepted_category)[:accepted].tolist(),
                  _host(result.accepted_segment)[:accepted].tolist()):
    sid = id_generator.get_id(c)
    if s >= 0:
      ids[s + 1] = sid
  for s in range(num):
    if not is_thing[s]:
      ids[s + 1] = id_generator.get_id(int(category[s]))
  if (ids[1:] == 0).any():
    raise ValueError("inconsistent FusionResult: a thing segment is missing from accepted_*")
  segments_info = [{"id": int(ids[s + 1]), "category_id": int(category[s]),
                    "area": int(area[s]), "bbox": [int(v) for v in bbox[s]], "iscrowd": 0}
                   for s in range(num)]
  png = id2rgb(ids[crop])
  return png, segments_info


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> None:
  """Write through a temporary file in the same folder, then rename: never a half-written file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(content)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_panoptic_png(path: str | os.PathLike, png_rgb: np.ndarray) -> None:
  """Save [H, W, 3] uint8 ids (id2rgb) as PNG, atomically."""
  png_rgb = np.asarray(png_rgb)
  if png_rgb.dtype != np.uint8 or png_rgb.ndim != 3 or png_rgb.shape[2] != 3:
    raise ValueError(f"panoptic PNG must be [H, W, 3] uint8, got {png_rgb.shape} {png_rgb.dtype}")
  buffer = io.BytesIO()
  Image.fromarray(png_rgb).save(buffer, format="PNG")
  atomic_write_bytes(path, buffer.getvalue())


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
  """[H, W] int32 segment ids of a panoptic PNG."""
  with Image.open(path) as im:
    return rgb2id(np.asarray(im.convert("RGB")))


def panoptic_json(annotations: Sequence[dict]) -> dict:
  """COCO panoptic prediction file content (SPEC §4.2): annotations + the 133 categories."""
  return {"annotations": list(annotations), "categories": cats.categories_json()}


def write_panoptic_json(path: str | os.PathLike, annotations: Sequence[dict]) -> None:
  atomic_write_bytes(path, json.dumps(panoptic_json(annotations)).encode("utf-8"))


class PanopticWriter:
  """Predict mode's panoptic outputs under `workdir` (one instance per run).

    writer = PanopticWriter(workdir)             # one IdGenerator for the whole run
    for ...: writer.add(image_id, stem, result_i, (H, W))   # writes panoptic/<stem>.png
    writer.close()                                # writes panoptic.json

  The JSON is also rewritten every `flush_every` images so that a crash loses little.
  """

  def __init__(self, workdir: str | os.PathLike, *, seed: int | None = DEFAULT_ID_SEED,
               flush_every: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.png_dir = self.workdir / "panoptic"
    self.json_path = self.workdir / "panoptic.json"
    self.id_generator = IdGenerator(seed)
    self.annotations: list[dict] = []
    self.flush_every = flush_every
    self._stems: set[str] = set()

  def add(self, image_id: Any, stem: str, result: Any, image_hw: Sequence[int]) -> dict:
    """Fuse-result -> PNG `<workdir>/panoptic/<stem>.png` + one annotation; returns it."""
    if not stem or "/" in stem or "\\" in stem:
      raise ValueError(f"invalid file stem {stem!r}")
    if stem in self._stems:
      raise ValueError(f"two images share the output name {stem}.png")
    png, segments_info = fusion_to_panoptic(result, image_hw, self.id_generator)
    write_panoptic_png(self.png_dir / f"{stem}.png", png)
    self._stems.add(stem)
    annotation = {"image_id": image_id, "file_name": f"{stem}.png",
                  "segments_info": segments_info}
    self.annotations.append(annotation)
    if self.flush_every and len(self.annotations) % self.flush_every == 0:
      self.write_json()
    return annotation

  def write_json(self) -> pathlib.Path:
    write_panoptic_json(self.json_path, self.annotations)
    return self.json_path

  def close(self) -> pathlib.Path:
    return self.write_json()

  def __enter__(self) -> "PanopticWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
