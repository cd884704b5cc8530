"""Random training batches and weights for the tiny config (configs/tiny.py), shared by tests."""
from __future__ import annotations

import jax
import numpy as np

from rap_jax.modeling.panoptic_rcnn import abstract_variables


def tiny_batch(config, n_real: int, n_pad: int, seed: int, pad_seed: int) -> dict:
  """Random training batch of the tiny config ('packed' masks); padding images are garbage."""
  rng = np.random.default_rng(seed)
  prng = np.random.default_rng(pad_seed)
  hc, wc = config.input.canvas_sizes[0]
  m = config.data.max_instances
  b = n_real + n_pad
  out = dict(image=np.zeros((b, hc, wc, 3), np.float32), semantic=np.zeros((b, hc, wc), np.uint8),
             boxes=np.zeros((b, m, 4), np.float32), labels=np.zeros((b, m), np.int32),
             instance_ids=np.zeros((b, m), np.int32), instance_valid=np.zeros((b, m), bool),
             relations=np.zeros((b, m, m), bool), masks=np.zeros((b, m, hc, wc), np.uint8))
  sizes = np.zeros((b, 2), np.int32)
  yy, xx = np.mgrid[:hc, :wc]
  for i in range(b):
    r = rng if i < n_real else prng
    h, w = (int(r.integers(96, hc + 1)), int(r.integers(120, wc + 1)))
    sizes[i] = (h, w)
    out["image"][i, :h, :w] = r.normal(0, 40, (h, w, 3))
    out["semantic"][i, :h, :w] = r.integers(0, 55, (h // 8 + 1, w // 8 + 1)).repeat(
        8, 0).repeat(8, 1)[:h, :w]
    k = int(r.integers(3, 7))
    xy = r.uniform(0, [w - 30, h - 30], (k, 2))
    wh = r.uniform(12, 60, (k, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])], 1).round(1)
    out["boxes"][i, :k] = boxes
    out["labels"][i, :k] = r.integers(1, 81, k)
    out["instance_ids"][i, :k] = 100 * i + np.arange(1, k + 1)
    out["instance_valid"][i, :k] = True
    out["relations"][i, :k, :k] = (r.uniform(size=(k, k)) < 0.4) & ~np.eye(k, dtype=bool)
    for j, (x1, y1, x2, y2) in enumerate(boxes):
      cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 + 0.5, (y2 - y1) / 2 + 0.5
      out["masks"][i, j] = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
  out["masks"] = np.packbits(out["masks"], axis=-1)
  pad = np.arange(b) >= n_real
  padded = (sizes + 31) // 32 * 32
  out["image_info"] = dict(
      original_hw=sizes, resized_hw=np.where(pad[:, None], 0, sizes),
      padded_hw=np.where(pad[:, None], 0, padded), canvas_hw=np.tile(np.int32((hc, wc)), (b, 1)),
      image_id=np.where(pad, -1, np.arange(b)).astype(np.int32), flipped=np.zeros(b, bool),
      is_padding=pad)
  return out


def random_variables(config, seed: int = 0) -> dict:
  """Random weights for the tiny model (fan-in scaled normals, FrozenBN near identity)."""
  rng = np.random.default_rng(seed)
  shapes = abstract_variables(config)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "buffers" in name:
      fill = 1.0 if ("weight" in name or "var" in name) else 0.0
      return np.full(leaf.shape, fill, np.float32)
    if leaf.ndim == 1:
      return np.full(leaf.shape, 1.0 if "scale" in name else 0.0, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(0, 1, leaf.shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)
