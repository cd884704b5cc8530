"""Data preparation: semantic label PNGs from COCO panoptic annotations (SPEC §7.3, §2.8).

Re-implements RAP's ``panoptic2semantic_segmentation_pfpn_style.py`` (``style="pfpn"``: 0 unlabeled,
1..53 stuff in ``panoptic_coco_categories.json`` order, 54 every thing pixel, crowd included; the
training labels) and ``panoptic2semantic_segmentation.py`` (``style="panopticapi"``: 0 unlabeled,
1..133 = 1-based index of the category in that json). The category order comes from the one table,
``rap_jax/data/categories.py`` (= panopticapi's json, which the original reads).

Per image the PNG is read with OpenCV (id = R + 256 G + 65536 B, computed in uint32), every segment
of ``segments_info`` paints its label on the pixels equal to its id (later segments win if ids
repeat), and the map is written as an 8-bit single-channel PNG with ``cv2.imwrite`` under the
panoptic PNG's file name, pixel- and byte-identical to the original's output.

Differences from the original, none of which changes a label: input/output paths are arguments
instead of being hard-coded (train for pfpn, val for panopticapi); images are the annotations of the
JSON (the original lists the PNG folder and fails with ``KeyError`` on a PNG missing from the JSON,
silently skips JSON entries without a PNG; here a missing PNG is an error naming it and extra files
are ignored); every image is converted (the committed pfpn script covers only 58,304 of 118,287
train images, SPEC §11.20); uint32 ids (SPEC §11.21); an unknown category id is an error naming
the image.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rap_jax.data import categories as cats
from rap_jax.data import prep_io

STYLES = ("pfpn", "panopticapi")


def label_table(style: str) -> np.ndarray:
  """[201] int32: COCO category id -> label of ``style`` (0 for unknown ids)."""
  if style == "pfpn":
    return cats.COCO_TO_SEMANTIC
  if style == "panopticapi":
    return cats.COCO_TO_INDEX133
  raise ValueError(f"unknown semantic label style {style!r}; expected one of {STYLES}")


def semantic_labels(ids: np.ndarray, segments: Sequence[Mapping[str, Any]], style: str = "pfpn",
                    where: str = "") -> np.ndarray:
  """[H, W] uint8 semantic labels of one panoptic image.

  Args:
    ids: [H, W] segment-id map (uint32).
    segments: the image's ``segments_info``.
    style: ``"pfpn"`` or ``"panopticapi"``.
    where: name of the image for error messages.
  """
  table = label_table(style)
  out = np.zeros(ids.shape, dtype=np.uint8)
  for seg in segments:
    cid = int(seg["category_id"])
    if not 0 < cid < len(table) or table[cid] == 0:
      raise ValueError(f"{where}: segment {seg['id']} has unknown category id {cid}")
    out[ids == seg["id"]] = table[cid]
  return out


def _convert_one(args) -> str:
  ann, panoptic_folder, output_folder, style = args
  png = os.path.join(panoptic_folder, ann["file_name"])
  labels = semantic_labels(prep_io.read_panoptic_png(png), ann["segments_info"], style, where=png)
  out = os.path.join(output_folder, ann["file_name"])
  prep_io.write_label_png(out, labels)
  return out


def panoptic_to_semantic(panoptic_json: Mapping[str, Any], panoptic_folder: prep_io.PathLike,
                         output_folder: prep_io.PathLike, style: str = "pfpn", workers: int = 1,
                         progress: bool = False) -> list[str]:
  """Writes ``<output_folder>/<file_name>`` for every panoptic annotation; returns the paths."""
  label_table(style)  # validate early
  pathlib.Path(output_folder).mkdir(parents=True, exist_ok=True)
  jobs = [(ann, str(panoptic_folder), str(output_folder), style)
          for ann in panoptic_json["annotations"]]
  return prep_io.ordered_map(_convert_one, jobs, workers, progress, f"semantic ({style})")
