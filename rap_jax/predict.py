"""Predict mode: photos -> COCO panoptic predictions, COCO instance results, visualisations.

  python -m rap_jax.main --config configs/fixtures/rap_small.py --mode predict --workdir DIR \
      --config.init_checkpoint=CKPT --config.predict.images="photos/*.jpg"

Writes `DIR/panoptic.json` + `DIR/panoptic/<stem>.png` (COCO panoptic prediction format, SPEC
§4.2), `DIR/instances.json` (COCO detection results: one entry per detection with bbox, score,
RLE segmentation and, for RAP models, the relation value) and `DIR/vis/<stem>.png` overlays.
Images are numbered 1, 2, ... in sorted path order (the `image_id` of both JSON files), and
written in that order whatever the batching: segment ids come from one id generator per run
(SPEC §4.3), so they depend on the order of the images, and the original goes through them in
order (TEST.IMS_PER_BATCH 1). Batches hold images of one canvas each, so with batch_size > 1 an
image can leave the network after later ones: its outputs wait and are written in turn. Images
are batched in windows of batch_size x len(canvas_sizes) x `REORDER_WINDOW` (each window's
partial batches run at its end), which bounds how many outputs wait.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import jax
from absl import logging
from tqdm import tqdm

from rap_jax import checkpoint
from rap_jax import inference
from rap_jax import panoptic_io
from rap_jax import visualize
from rap_jax.data import transforms as T
from rap_jax.metrics import coco_ap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Batches per canvas in one batching window (see the module docstring).
REORDER_WINDOW = 4


def list_images(spec: str) -> list[pathlib.Path]:
  """A file, a folder (its images, not recursive) or a glob pattern -> sorted image paths."""
  if not spec:
    raise ValueError("predict mode needs --config.predict.images=<file, folder or glob pattern>")
  p = pathlib.Path(spec).expanduser()
  if p.is_file():
    paths = [p]
  elif p.is_dir():
    paths = [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
  else:
    paths = [pathlib.Path(q) for q in glob.glob(str(p)) if os.path.isfile(q)]
  if not paths:
    raise FileNotFoundError(f"predict.images={spec!r} matches no image file")
  return sorted(paths)


def find_checkpoint(config, workdir: str) -> str:
  """The weights predict/eval run: the newest checkpoint trained in `workdir`, else
  `config.init_checkpoint` (a converted checkpoint, a step directory or a training workdir)."""
  latest = checkpoint.latest_checkpoint(workdir)
  if latest is not None:
    return str(latest)
  if config.init_checkpoint:
    return str(checkpoint.resolve_checkpoint(config.init_checkpoint))
  raise FileNotFoundError(
      f"no weights to run: set --config.init_checkpoint=<dir> (a checkpoint converted with "
      f"`python -m convert`, or a training workdir), or train into {workdir} first")


def instance_records(result: dict, i: int, image_id: Any, file_name: str,
                     original_hw: Sequence[int], with_relation: bool) -> list[dict]:
  """COCO detection results of image i of a batch result (host numpy arrays).

  bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1] in original pixels (maskrcnn-benchmark's "+1"
  width convention); segmentation = RLE of the pasted mask; plus `file_name` and, for RAP models,
  the `relation` value.
  """
  h, w = (int(v) for v in original_hw)
  v = result["valid"][i]
  records = coco_ap.detections_to_coco(image_id, result["boxes"][i][v], result["scores"][i][v],
                                       result["labels"][i][v], result["masks"][i][v][:, :h, :w])
  relation = result["relation"][i][v] if with_relation else None
  for k, rec in enumerate(records):
    rec["file_name"] = file_name
    if relation is not None:
      rec["relation"] = float(relation[k])
  return records


def _atomic_json(path: pathlib.Path, content: Any) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(content))
  os.replace(tmp, path)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  """Consecutive lists of `size` items (the last one shorter)."""
  it = iter(items)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def in_order(pairs: Iterable[tuple[int, Any]]) -> Iterator[Any]:
  """(position, value) pairs arriving in any order -> the values in position order 0, 1, 2, ...

  Each value is released as soon as all earlier positions have been. Positions must be 0..n-1,
  each once; a missing one raises at the end.
  """
  waiting: dict[int, Any] = {}
  expect = 0
  for pos, value in pairs:
    if pos < expect or pos in waiting:
      raise ValueError(f"position {pos} arrived twice")
    waiting[pos] = value
    while expect in waiting:
      yield waiting.pop(expect)
      expect += 1
  if waiting:
    raise ValueError(f"positions {sorted(waiting)} arrived but {expect} never did")


def run(config, workdir: str) -> dict:
  """Predict every image of `config.predict.images` into `workdir`; returns a summary dict."""
  paths = list_images(config.predict.images)
  ckpt = find_checkpoint(config, workdir)
  logging.info("predict: %d images, weights %s", len(paths), ckpt)
  predictor = inference.Predictor.from_checkpoint(config, ckpt)
  out_dir = pathlib.Path(workdir)
  out_dir.mkdir(parents=True, exist_ok=True)
  failures: list[str] = []

  def items() -> Iterator[inference.ImageInput]:
    seq = itertools.count()                  # position among the images actually read
    for image_id, path in enumerate(paths, start=1):
      try:
        rgb = T.load_image(path)
      except (OSError, ValueError) as e:  # a bad file must not stop the others
        logging.error("%s", e)
        failures.append(f"{path}: {e}")
        continue
      keep = rgb if config.predict.write_vis else None
      yield inference.prepare_image(rgb, config.input, key=(next(seq), image_id, path, keep))

  with_relation = config.model.roi_heads.relation.kind == "rap"
  batch_size = int(config.predict.batch_size)
  window = batch_size * len(config.input.canvas_sizes) * REORDER_WINDOW
  instances: list[dict] = []
  writer = panoptic_io.PanopticWriter(out_dir, flush_every=100)
  num = 0

  def per_image() -> Iterator[tuple[int, dict]]:
    """(position, outputs of one image) as batches come back; only per-image slices are kept."""
    for chunk in chunked(items(), window):
      for batch in inference.batches(chunk, config.input, batch_size,
                                     int(config.postprocess.output_size_multiple)):
        result = jax.device_get(predictor(batch))
        fused = result.pop("fusion")
        for i, key in enumerate(batch.keys):
          if key is None:
            continue
          seq, image_id, path, rgb = key
          hw = tuple(int(v) for v in batch.original_hw[i])
          yield seq, dict(
              image_id=image_id, path=path, rgb=rgb, hw=hw, fused=fused[i],
              records=instance_records(result, i, image_id, path.name, hw, with_relation),
              relation=result["relation"][i] if "relation" in result else None,
              occlusion=result["occlusion"][i] if "occlusion" in result else None)

  for out in tqdm(in_order(per_image()), desc="predict", unit="image", total=len(paths),
                  disable=jax.process_index() != 0):
    annotation = writer.add(out["image_id"], out["path"].stem, out["fused"], out["hw"])
    instances.extend(out["records"])
    if out["rgb"] is not None:
      overlay = visualize.render_fusion(
          out["rgb"], out["fused"], method=config.fusion.method, relation=out["relation"],
          occlusion=out["occlusion"], segments_info=annotation["segments_info"])
      visualize.write_overlay(out_dir, out["path"].stem, overlay)
    num += 1
  writer.close()
  _atomic_json(out_dir / "instances.json", instances)
  summary = {"images": num, "detections": len(instances), "failed": failures,
             "panoptic_json": str(out_dir / "panoptic.json")}
  logging.info("predict: wrote %d images, %d detections to %s", num, len(instances), out_dir)
  if failures:
    raise RuntimeError(f"{len(failures)} image(s) could not be read (the others were written):\n"
                       + "\n".join(failures))
  return summary
