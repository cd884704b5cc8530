"""File helpers shared by the data-preparation scripts and the synthetic dataset.

Every reader raises an error that names the offending file (missing file, malformed JSON, unreadable
or corrupt PNG), so that a bad annotation on a 118k-image run is found at once.

Panoptic PNG ids follow COCO panoptic (SPEC §4.3, §7.1): ``id = R + 256 G + 65536 B``. The
original scripts read the PNG with ``cv2.imread`` (BGR channel order) and compute the id from the
channels; we do the same, in ``uint32`` (the original's ``256 * uint8_array`` overflows under
NumPy 2, SPEC §11.21).
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

PathLike = str | os.PathLike


def load_json(path: PathLike, what: str = "JSON file", keys: Sequence[str] = ()) -> Any:
  """``json.load`` of ``path``, key order preserved; errors name the file.

  Args:
    path: the file.
    what: what the file is, for messages ("panoptic JSON").
    keys: top-level keys the object must have (e.g. ``("images", "annotations")``).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} not found: {path}")
  try:
    with open(path, "r", encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
  missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
  if missing:
    raise ValueError(f"{what} {path} lacks the key(s) {missing}")
  return obj


def dump_json(obj: Any, path: PathLike) -> None:
  """``json.dump`` with Python's default separators (what the original scripts wrote), no newline.

  The output is byte-compatible with the original ``refine_instance_json_file.py`` (SPEC §7.2).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """[..., 3] uint8 RGB -> [...] uint32 segment ids ``R + 256 G + 65536 B``."""
  rgb = np.asarray(rgb, dtype=np.uint32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """[...] integer segment ids -> [..., 3] uint8 RGB (inverse of :func:`rgb2id`)."""
  ids = np.asarray(ids, dtype=np.uint32)
  return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def read_panoptic_png(path: PathLike) -> np.ndarray:
  """Segment-id map [H, W] uint32 of a COCO panoptic PNG, read like the original (``cv2.imread``).

  ``cv2.imread`` returns BGR, so the id is ``ch2 + 256 ch1 + 65536 ch0``. A grey PNG is expanded to
  three equal channels and an alpha channel is dropped, exactly as OpenCV does for the original.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"panoptic PNG not found: {path}")
  bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError(f"cannot decode panoptic PNG (corrupt or not an image): {path}")
  return rgb2id(bgr[..., ::-1])


def write_label_png(path: PathLike, label: np.ndarray) -> None:
  """Writes an [H, W] label map as an 8-bit single-channel PNG with ``cv2.imwrite`` (SPEC §7.3)."""
  label = np.asarray(label)
  if label.ndim != 2 or label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f"label map for {path} must be 2-D with values in 0..255")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), label.astype(np.uint8)):
    raise OSError(f"cv2.imwrite failed for {path}")


def write_rgb_png(path: PathLike, rgb: np.ndarray) -> None:
  """Writes an [H, W, 3] uint8 RGB image as PNG (OpenCV: BGR on disk order handled here)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., ::-1])):
    raise OSError(f"cv2.imwrite failed for {path}")


def ordered_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1,
                progress: bool = False, desc: str = "") -> list[Any]:
  """``[fn(j) for j in jobs]``, optionally over a fork process pool, with an optional tqdm bar.

  Results keep the order of ``jobs``, so outputs do not depend on ``workers``.
  """
  from tqdm import tqdm
  if workers <= 1 or len(jobs) <= 1:
    return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
  import multiprocessing
  chunk = max(1, min(16, len(jobs) // (4 * workers)))
  with multiprocessing.get_context("fork").Pool(workers) as pool:
    return list(tqdm(pool.imap(fn, jobs, chunksize=chunk), total=len(jobs), desc=desc,
                     disable=not progress))
