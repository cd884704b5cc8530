"""tensorflow-datasets builder for COCO panoptic (+ RAP relations) from local folders, no download.

Reads the on-disk layout shared by COCO 2017 and the built-in synthetic dataset (`<raw_dir>` =
`config.data.data_dir`):

  images/<split>/<file_name>
  annotations/instances_<split>_with_relation.json   (preferred: carries the RAP `overlap` field)
  annotations/instances_<split>.json                 (fallback: no relations)
  annotations/panoptic_<split>.json + panoptic_<split>/<name>.png   (optional, for PQ)
  annotations/semantic_<split>/<file stem>.png       (pfpn labels: 0 void, 1..53 stuff, 54 thing)

and writes TFRecords to `<tfds_dir>/coco_panoptic_rap/<config name>/<version>/`. One example per
image of the instances JSON, in ascending image id (shuffling disabled: eval reads sorted ids):

  image          uint8 [H, W, 3] (the source JPEG/PNG bytes when they decode to RGB/L as-is)
  image_id       int64; file_name str; height, width int64 (checked against the decoded image)
  objects        Sequence, annotation order of the JSON (crowd objects kept, flagged):
    bbox         float32 [N, 4] xyxy pixels of the ORIGINAL image, built exactly like the
                 original's target (SPEC §6.1, fixtures "Conventions"): float32
                 (x, y, x + max(w - 1, 0), y + max(h - 1, 0)), then `clip_to_image` to
                 [0, W-1] x [0, H-1]; objects with x2 <= x1 or y2 <= y1 are removed
                 (`remove_empty=True`)
    label        int64 [N] contiguous thing id 1..80 (categories.py)
    instance_id  int64 [N] COCO annotation id;  is_crowd bool [N];  area float32 [N]
    mask         PNG uint8 [N][H, W, 1] 0/1, amodal, pycocotools `annToMask` of the segmentation
  relations      int64 [R, 2] (front_id, back_id) from every `overlap` list (SPEC §7.2), insertion
                 order of the original's dict (annotation order, then overlap order), deduplicated,
                 restricted to stored objects
  semantic       PNG uint8 [H, W, 1] read like the original (cv2 BGR -> GRAY); zeros when the split
                 has no semantic folder (`has_semantic` False)
  panoptic_file_name  str, '' when the image has no panoptic annotation (PQ reads the PNG on disk)

`info.metadata[split]` holds per-example `image_id`, `height`, `width`, `num_instances` (non-crowd
objects left after empty-box removal) in example order, so the input pipeline can plan canvases
and eval padding without reading images.

Errors name the file: malformed JSON, unreadable/corrupt images or semantic PNGs, size mismatches,
unknown categories, bad segmentations.
"""
from __future__ import annotations

import collections
import concurrent.futures
import io
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds
from pycocotools import mask as mask_util

from rap_jax.data import categories

try:  # TensorFlow must never take the GPUs from JAX.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialised: nothing to hide any more
  pass

SPLITS = ("train2017", "val2017")
_ANNOTATIONS = "annotations"


# ------------------------------------------------------------------ raw-file readers


def read_json(path: str | os.PathLike) -> Any:
  """json.load that names the file on failure (missing, unreadable or malformed)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"annotation file not found: {path}")
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"malformed JSON in {path}: {e}") from e


def instances_path(raw_dir: str | os.PathLike, split: str) -> pathlib.Path:
  """`instances_<split>_with_relation.json` when present, else `instances_<split>.json`."""
  ann = pathlib.Path(raw_dir) / _ANNOTATIONS
  rel = ann / f"instances_{split}_with_relation.json"
  return rel if rel.is_file() else ann / f"instances_{split}.json"


def available_splits(raw_dir: str | os.PathLike,
                     candidates: Sequence[str] = SPLITS) -> list[str]:
  """Splits of `candidates` that have an images folder and an instances JSON on disk."""
  raw = pathlib.Path(raw_dir)
  return [s for s in candidates
          if (raw / "images" / s).is_dir() and instances_path(raw, s).is_file()]


def semantic_file_name(file_name: str) -> str:
  """Semantic PNG of an image: the original replaces '.jpg' by '.png' (any extension here)."""
  return os.path.splitext(file_name)[0] + ".png"


def coco_boxes_to_xyxy(xywh: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """COCO [x, y, w, h] -> the original's clipped xyxy boxes and the keep mask (SPEC §6.1).

  float32 throughout, as torch does it: `x2 = x + max(w - 1, 0)` ("+1" convention,
  `BoxList.convert('xyxy')`), then `clip_to_image(remove_empty=True)`: clamp to
  [0, W-1] x [0, H-1] and keep boxes with x2 > x1 and y2 > y1.

  Args:
    xywh: [N, 4] COCO boxes (any float dtype; cast to float32 first like `torch.as_tensor`).
    height, width: original image size.
  Returns:
    boxes: [N, 4] float32 xyxy (all N rows, clipped); keep: [N] bool.
  """
  b = np.asarray(xywh, np.float32).reshape(-1, 4)
  one = np.float32(1)
  x1, y1 = b[:, 0], b[:, 1]
  x2 = x1 + np.maximum(b[:, 2] - one, np.float32(0))
  y2 = y1 + np.maximum(b[:, 3] - one, np.float32(0))
  boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, np.float32(width - 1))
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, np.float32(height - 1))
  keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
  return boxes, keep


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
  """pycocotools `annToMask`: polygons / uncompressed RLE / compressed RLE -> [H, W] uint8 0/1."""
  if isinstance(segm, list):
    if not segm:
      return np.zeros((height, width), np.uint8)
    rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
  elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
    rle = mask_util.frPyObjects(segm, height, width)
  elif isinstance(segm, dict):
    counts = segm["counts"]
    rle = dict(size=segm["size"], counts=counts.encode() if isinstance(counts, str) else counts)
  else:
    raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
  mask = mask_util.decode(rle)
  if mask.shape != (height, width):
    raise ValueError(f"segmentation of size {mask.shape} for an image of size {(height, width)}")
  return mask.astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
  ok, buf = cv2.imencode(".png", array)
  if not ok:
    raise RuntimeError("cv2.imencode failed")
  return buf.tobytes()


def read_image_bytes(path: pathlib.Path, height: int, width: int) -> bytes:
  """Validated image bytes: decodes fully (PIL), checks the size, re-encodes unusual modes.

  JPEG/PNG files in mode RGB or L are stored as they are (TF decodes them like PIL's
  `convert('RGB')`); anything else (CMYK, palette, RGBA, other formats) is converted with
  `convert('RGB')` and stored as PNG.

  Raises:
    FileNotFoundError / ValueError naming the file.
  """
  if not path.is_file():
    raise FileNotFoundError(f"image not found: {path}")
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      fmt, mode, size = im.format, im.mode, im.size
      rgb = None if (fmt in ("JPEG", "PNG") and mode in ("RGB", "L")) else np.asarray(
          im.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e
  if size != (width, height):
    raise ValueError(f"image {path} has size (h, w) = {(size[1], size[0])} but the annotation "
                     f"file says {(height, width)}")
  return data if rgb is None else _png_bytes(rgb[..., ::-1])


def read_semantic_png(path: pathlib.Path, height: int, width: int) -> bytes:
  """Semantic label PNG as the original reads it (`cv2.imread` + BGR2GRAY), as 8-bit PNG bytes."""
  if not path.is_file():
    raise FileNotFoundError(f"semantic label not found: {path}")
  data = path.read_bytes()
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise ValueError(f"cannot read semantic label {path}")
  if img.shape[:2] != (height, width):
    raise ValueError(f"semantic label {path} has size {img.shape[:2]}, image is {(height, width)}")
  gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
  single = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if single is not None and single.ndim == 2 and single.dtype == np.uint8 and np.array_equal(
      single, gray):
    return data  # already an 8-bit gray PNG with these values
  return _png_bytes(gray)


# ------------------------------------------------------------------ per-image records


class _SplitIndex:
  """The parsed annotation files of one split: images sorted by id, annotations grouped."""

  def __init__(self, raw_dir: pathlib.Path, split: str):
    self.raw_dir, self.split = raw_dir, split
    self.instances_file = instances_path(raw_dir, split)
    inst = read_json(self.instances_file)
    if not isinstance(inst, dict) or "images" not in inst or "annotations" not in inst:
      raise ValueError(f"malformed COCO instances file {self.instances_file}: needs 'images' "
                       "and 'annotations'")
    try:
      self.images = sorted(inst["images"], key=lambda im: int(im["id"]))
      self.anns: dict[int, list[dict]] = collections.defaultdict(list)
      for a in inst["annotations"]:  # JSON order = pycocotools getAnnIds order
        self.anns[int(a["image_id"])].append(a)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"malformed COCO instances file {self.instances_file}: {e!r}") from e
    ids = [int(im["id"]) for im in self.images]
    if len(set(ids)) != len(ids):
      raise ValueError(f"duplicate image ids in {self.instances_file}")
    self.with_relations = self.instances_file.name.endswith("_with_relation.json")

    pan_file = raw_dir / _ANNOTATIONS / f"panoptic_{split}.json"
    self.panoptic_names: dict[int, str] = {}
    if pan_file.is_file():
      pan = read_json(pan_file)
      try:
        self.panoptic_names = {int(a["image_id"]): str(a["file_name"])
                               for a in pan["annotations"]}
      except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed COCO panoptic file {pan_file}: {e!r}") from e
    self.semantic_dir = raw_dir / _ANNOTATIONS / f"semantic_{split}"
    self.has_semantic = self.semantic_dir.is_dir()
    if not self.has_semantic:
      logging.warning("no semantic labels for %s (%s missing): semantic maps are stored as zeros",
                      split, self.semantic_dir)

  def objects(self, image: dict) -> tuple[dict, list[tuple[int, int]], list[Any]]:
    """Kept objects (numpy arrays), relation pairs and segmentations of one image record."""
    h, w = int(image["height"]), int(image["width"])
    anns = self.anns.get(int(image["id"]), [])
    try:
      xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
      boxes, keep = coco_boxes_to_xyxy(xywh, h, w)
      kept = [a for a, k in zip(anns, keep) if k]
      labels = []
      for a in kept:
        cid = int(a["category_id"])
        if not (0 <= cid < len(categories.COCO_TO_CONTIGUOUS)
                and categories.COCO_TO_CONTIGUOUS[cid] > 0):
          raise ValueError(f"annotation {a['id']} has category {cid}, not a COCO thing category")
        labels.append(int(categories.COCO_TO_CONTIGUOUS[cid]))
      objs = dict(
          bbox=boxes[keep].reshape(-1, 4),
          label=np.array(labels, np.int64),
          instance_id=np.array([int(a["id"]) for a in kept], np.int64),
          is_crowd=np.array([bool(a.get("iscrowd", 0)) for a in kept], bool),
          area=np.array([float(a.get("area", 0.0)) for a in kept], np.float32),
      )
      stored = set(objs["instance_id"].tolist())
      pairs: dict[tuple[int, int], None] = {}
      for a in anns:
        for front in a.get("overlap", []) or []:
          pair = (int(front), int(a["id"]))
          if pair[0] in stored and pair[1] in stored:
            pairs.setdefault(pair, None)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"bad annotation for image {image.get('id')} in {self.instances_file}: "
                       f"{e}") from e
    return objs, list(pairs), [a.get("segmentation", []) for a in kept]

  def metadata(self) -> dict[str, list[int]]:
    """Per-example image_id, height, width, num_instances (non-crowd kept), example order."""
    meta = dict(image_id=[], height=[], width=[], num_instances=[])
    for image in self.images:
      objs, _, _ = self.objects(image)
      meta["image_id"].append(int(image["id"]))
      meta["height"].append(int(image["height"]))
      meta["width"].append(int(image["width"]))
      meta["num_instances"].append(int((~objs["is_crowd"]).sum()))
    return meta

  def example(self, image: dict) -> tuple[int, dict]:
    """(key, tfds example) of one image record; errors name the offending file."""
    image_id, file_name = int(image["id"]), str(image["file_name"])
    h, w = int(image["height"]), int(image["width"])
    image_bytes = read_image_bytes(self.raw_dir / "images" / self.split / file_name, h, w)
    objs, pairs, segms = self.objects(image)
    masks = []
    for segm, iid in zip(segms, objs["instance_id"]):
      try:
        masks.append(_png_bytes(segmentation_to_mask(segm, h, w)))
      except Exception as e:  # pycocotools raises assorted types
        raise ValueError(f"bad segmentation of annotation {iid} (image {image_id}) in "
                         f"{self.instances_file}: {e}") from e
    if self.has_semantic:
      semantic = read_semantic_png(self.semantic_dir / semantic_file_name(file_name), h, w)
    else:
      semantic = _png_bytes(np.zeros((h, w), np.uint8))
    return image_id, dict(
        image=image_bytes,
        image_id=image_id,
        file_name=file_name,
        height=h,
        width=w,
        objects=dict(objs, mask=masks),
        relations=np.array(pairs, np.int64).reshape(-1, 2),
        semantic=semantic,
        has_semantic=self.has_semantic,
        panoptic_file_name=self.panoptic_names.get(image_id, ""),
    )


def _ordered_map(fn: Callable, items: Iterable, num_workers: int,
                 lookahead: int = 64) -> Iterator:
  """`map(fn, items)` on a thread pool, in order, with at most `lookahead` results pending."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending: collections.deque = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= lookahead:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


# ------------------------------------------------------------------ the builder


class CocoPanopticRap(tfds.core.GeneratorBasedBuilder):
  """COCO panoptic + instances (+ RAP `overlap` relations) + semantic labels from local folders.

  The config name is the dataset's name (`config.data.name`: 'coco', 'synthetic', ...), so
  several raw datasets can share one tfds directory. Usage:

    builder = CocoPanopticRap(raw_dir='datasets/coco', data_dir='datasets/coco/tfds',
                              config='coco', splits=('train2017', 'val2017'))
    builder.download_and_prepare()      # once; reads only local files
    ds = builder.as_dataset(split='val2017')
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "COCO panoptic with RAP relations, masks and semantic labels."}

  def __init__(self, *, raw_dir: str | os.PathLike | None = None,
               splits: Sequence[str] | None = None, num_workers: int | None = None,
               config: str | tfds.core.BuilderConfig | None = "coco", **kwargs):
    """Args:
      raw_dir: the raw dataset folder (layout in the module docstring); only needed to prepare.
      splits: split names to prepare (default: those of SPLITS present in `raw_dir`).
      num_workers: threads that decode/validate images while preparing (default: CPU count).
      config: dataset name, becomes the sub-folder `<data_dir>/coco_panoptic_rap/<config>/`.
      **kwargs: `data_dir` (where the TFRecords go) and other `tfds.core.DatasetBuilder` args.
    """
    if isinstance(config, str):
      config = tfds.core.BuilderConfig(name=config, description=f"raw dataset '{config}'")
    self._raw_dir = pathlib.Path(raw_dir) if raw_dir else None
    self._splits = tuple(splits) if splits else None
    self._num_workers = num_workers or os.cpu_count() or 1
    super().__init__(config=config, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> pathlib.Path:
    # tfds 4.9's own lookup imports `importlib_resources`, absent on Python >= 3.9 installs.
    return pathlib.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "file_name": tfds.features.Text(),
            "height": tfds.features.Scalar(np.int64),
            "width": tfds.features.Scalar(np.int64),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "label": tfds.features.Scalar(np.int64),
                "instance_id": tfds.features.Scalar(np.int64),
                "is_crowd": tfds.features.Scalar(np.bool_),
                "area": tfds.features.Scalar(np.float32),
                "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            }),
            "relations": tfds.features.Tensor(shape=(None, 2), dtype=np.int64),
            "semantic": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "has_semantic": tfds.features.Scalar(np.bool_),
            "panoptic_file_name": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # examples stay in ascending image id (eval order)
        homepage="https://github.com/RAPNet/RAP",
    )

  def _split_generators(self, dl_manager) -> dict[str, Any]:
    del dl_manager  # nothing to download
    if self._raw_dir is None:
      raise ValueError(f"{self.name}/{self.builder_config.name} is not prepared in "
                       f"{self.data_dir} and no raw_dir was given to prepare it from")
    if not self._raw_dir.is_dir():
      raise FileNotFoundError(f"raw dataset folder not found: {self._raw_dir}")
    splits = self._splits or available_splits(self._raw_dir)
    if not splits:
      raise FileNotFoundError(f"no split of {SPLITS} found in {self._raw_dir} (expected "
                              "images/<split>/ and annotations/instances_<split>*.json)")
    generators = {}
    for split in splits:
      index = _SplitIndex(self._raw_dir, split)
      if not index.with_relations:
        logging.warning("%s has no _with_relation file: no relations for %s",
                        index.instances_file, split)
      self.info.metadata[split] = index.metadata()
      generators[split] = self._generate_examples(index)
    return generators

  def _generate_examples(self, index: _SplitIndex) -> Iterator[tuple[int, dict]]:
    yield from _ordered_map(index.example, index.images, self._num_workers)


def tfds_dir(data_config) -> pathlib.Path:
  """Where prepared TFRecords live: `config.data.tfds_dir`, default `<data_dir>/tfds`."""
  explicit = data_config.get("tfds_dir", "") if hasattr(data_config, "get") else ""
  return pathlib.Path(explicit) if explicit else pathlib.Path(data_config.data_dir) / "tfds"


def get_builder(data_config, *, prepare: bool = True, splits: Sequence[str] | None = None,
                num_workers: int | None = None) -> CocoPanopticRap:
  """The builder of `config.data` (name, data_dir, tfds_dir), prepared unless `prepare=False`.

  Preparation happens once (tfds skips it when the version folder exists); `splits` defaults to
  `(train_split, eval_split)` that exist on disk.
  """
  raw = pathlib.Path(data_config.data_dir)
  if splits is None:
    wanted = [s for s in (data_config.train_split, data_config.eval_split) if s]
    splits = available_splits(raw, wanted) if raw.is_dir() else wanted
  builder = CocoPanopticRap(raw_dir=raw, splits=splits, num_workers=num_workers,
                            config=data_config.name, data_dir=tfds_dir(data_config))
  if prepare:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder
