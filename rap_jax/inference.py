"""The jitted inference step shared by predict and eval modes (SPEC §2-§5).

`Predictor` owns the model and its variables and runs, in ONE compiled function per static
shape (canvas, output canvas, batch size): the network, the per-image post-processing to the
original resolution, and the panoptic fusion. Host code only prepares padded batches and writes
results. Each image's result is independent of its batch mates and of the canvas it is padded
into (see `rap_jax.modeling.layers`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rap_jax import checkpoint
from rap_jax import postprocess as pp
from rap_jax.data import categories
from rap_jax.data import transforms as T
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN, abstract_variables
from rap_jax.ops import fusion as fusion_ops


@dataclasses.dataclass
class ImageInput:
  """One image as the network sees it (host numpy)."""
  image: np.ndarray  # [h', w', 3] float32 normalised BGR (not padded)
  original_hw: tuple[int, int]
  resized_hw: tuple[int, int]
  padded_hw: tuple[int, int]
  key: Any = None  # caller's handle (file path, dataset id, ...)


def prepare_image(rgb: np.ndarray, input_config, key: Any = None) -> ImageInput:
  """RGB uint8 [H, W, 3] -> `ImageInput` through the original test transform (SPEC §3)."""
  image, info = T.preprocess_for_test(rgb, input_config)
  return ImageInput(image, info["original_hw"], info["resized_hw"], info["padded_hw"], key)


@dataclasses.dataclass
class Batch:
  """A padded batch: arrays with a leading axis of `batch_size` (padding rows repeat row 0)."""
  images: np.ndarray  # [B, Hc, Wc, 3]
  padded_hw: np.ndarray  # [B, 2] int32
  resized_hw: np.ndarray  # [B, 2] int32
  original_hw: np.ndarray  # [B, 2] int32
  ratios: np.ndarray  # [B, 2] float32 (H/h', W/w')
  is_padding: np.ndarray  # [B] bool
  keys: list  # len B (None for padding)
  out_hw: tuple[int, int]  # static output canvas


def output_canvas(original_hws: Iterable[Sequence[int]], multiple: int) -> tuple[int, int]:
  """Smallest (Ho, Wo), multiples of `multiple`, holding every original size."""
  hws = list(original_hws)
  h = max(int(s[0]) for s in hws)
  w = max(int(s[1]) for s in hws)
  return (int(math.ceil(h / multiple) * multiple), int(math.ceil(w / multiple) * multiple))


def make_batch(items: Sequence[ImageInput], batch_size: int, canvas_hw: tuple[int, int],
               out_multiple: int) -> Batch:
  """Pad `items` (<= batch_size) into one static batch."""
  if not items or len(items) > batch_size:
    raise ValueError(f"a batch holds 1..{batch_size} images, got {len(items)}")
  b = batch_size
  images = np.zeros((b, canvas_hw[0], canvas_hw[1], 3), np.float32)
  fields = {k: np.zeros((b, 2), np.int32) for k in ("padded_hw", "resized_hw", "original_hw")}
  keys, pad = [], np.zeros((b,), bool)
  for i in range(b):
    it = items[i] if i < len(items) else items[0]
    pad[i] = i >= len(items)
    h, w = it.image.shape[:2]
    images[i, :h, :w] = it.image
    fields["padded_hw"][i] = it.padded_hw
    fields["resized_hw"][i] = it.resized_hw
    fields["original_hw"][i] = it.original_hw
    keys.append(None if pad[i] else it.key)
  ratios = pp.resize_ratios(fields["original_hw"], fields["resized_hw"])
  out_hw = output_canvas([it.original_hw for it in items], out_multiple)
  return Batch(images, fields["padded_hw"], fields["resized_hw"], fields["original_hw"], ratios,
               pad, keys, out_hw)


def batches(items: Iterable[ImageInput], input_config, batch_size: int,
            out_multiple: int) -> Iterator[Batch]:
  """Group images by canvas (the smallest configured canvas that holds each), in order.

  Images are buffered per canvas and a batch is emitted as soon as it is full; the remaining
  partial batches are padded at the end. Every image appears in exactly one batch.
  """
  pending: dict[tuple[int, int], list[ImageInput]] = {}
  for it in items:
    canvas = T.choose_canvas(it.padded_hw, input_config.canvas_sizes)
    group = pending.setdefault(canvas, [])
    group.append(it)
    if len(group) == batch_size:
      yield make_batch(group, batch_size, canvas, out_multiple)
      pending[canvas] = []
  for canvas, group in pending.items():
    if group:
      yield make_batch(group, batch_size, canvas, out_multiple)


def supported_fusions(config) -> tuple[str, ...]:
  """Every fusion the configured model can feed, `config.fusion.method` first.

  A RAP model: rap + heuristic; an OCFusion model: ocfusion + heuristic; Panoptic FPN: heuristic.
  Eval scores them all on the same detections (the network runs once).
  """
  kind = config.model.roi_heads.relation.kind
  methods = [config.fusion.method]
  for m in ({"rap": ("rap",), "ocfusion": ("ocfusion",)}.get(kind, ()) + ("heuristic",)):
    if m not in methods:
      methods.append(m)
  return tuple(methods)


class Predictor:
  """Network + post-processing + fusion, jitted per static batch shape.

  `extra_fusions`: further fusion methods run in the same step on the same detections; their
  results come back under "fusions" (a dict by method, the configured one included).
  """

  def __init__(self, config, variables, extra_fusions: Sequence[str] = ()):
    self.config = config
    self.model = PanopticRCNN.from_config(config.model)
    self.variables = jax.device_put(variables)
    self.fusion_cfg = fusion_ops.FusionConfig.from_config(config.fusion,
                                                          tile=fusion_ops.default_tile())
    self.relation_kind = config.model.roi_heads.relation.kind
    methods = [self.fusion_cfg.method] + [m for m in extra_fusions if m != self.fusion_cfg.method]
    needs = {"rap": "rap", "ocfusion": "ocfusion"}
    for m in methods:
      if m in needs and self.relation_kind != needs[m]:
        raise ValueError(f"fusion.method {m!r} needs model.roi_heads.relation.kind {needs[m]!r} "
                         f"(this model: {self.relation_kind!r})")
    self.extra_fusion_cfgs = tuple(dataclasses.replace(self.fusion_cfg, method=m)
                                   for m in methods[1:])
    self._step = jax.jit(self._step_impl, static_argnames=("out_hw", "intermediates"))

  @classmethod
  def from_checkpoint(cls, config, directory: str) -> "Predictor":
    """Load variables (a converted or trained checkpoint) strictly against the config's model."""
    reference = abstract_variables(config)
    variables = checkpoint.restore_variables(directory, reference)
    return cls(config, variables)

  def _step_impl(self, variables, images, padded_hw, resized_hw, original_hw, ratios, *,
                 out_hw, intermediates=False):
    pcfg = self.config.postprocess
    with jax.default_matmul_precision(self.config.model.matmul_precision):
      out = self.model.apply(variables, images, padded_hw, resized_hw)
    post = pp.postprocess_batch(out, padded_hw, resized_hw, original_hw, ratios, out_hw,
                                pcfg.mask_threshold, pcfg.mask_padding,
                                pcfg.semantic_crop_padding)
    labels_coco = jnp.asarray(categories.CONTIGUOUS_TO_COCO)[out["det_labels"]]
    relation = out.get("relation")
    occlusion = out.get("occlusion")
    fused = fusion_ops.fuse_with_settings(
        self.fusion_cfg, post["masks"], out["det_scores"], labels_coco, post["semantic"],
        valid=out["det_valid"], relation=relation, occlusion=occlusion,
        mask_windows=post["mask_windows"], batched=True)
    extra = {cfg.method: fusion_ops.fuse_with_settings(
        cfg, post["masks"], out["det_scores"], labels_coco, post["semantic"],
        valid=out["det_valid"], relation=relation, occlusion=occlusion,
        mask_windows=post["mask_windows"], batched=True) for cfg in self.extra_fusion_cfgs}
    result = dict(boxes=post["boxes"], boxes_resized=out["det_boxes"], masks=post["masks"],
                  semantic=post["semantic"],
                  scores=out["det_scores"], labels=labels_coco,
                  labels_contiguous=out["det_labels"], valid=out["det_valid"],
                  num_detections=out["det_num"], fusion=fused)
    if extra:
      result["fusions"] = {self.fusion_cfg.method: fused, **extra}
    if relation is not None:
      result["relation"] = relation
    if occlusion is not None:
      result["occlusion"] = occlusion
      result["occlusion_probs"] = out["occlusion_probs"]
    if intermediates:
      result["network"] = out
    return result

  def __call__(self, batch: Batch, intermediates: bool = False) -> dict:
    """Run one padded batch; returns device arrays (leading axis = batch size).

    With `intermediates=True` the network's raw outputs (every intermediate tensor, see
    `PanopticRCNN.__call__`) come back too, under "network".
    """
    return self._step(self.variables, batch.images, batch.padded_hw, batch.resized_hw,
                      batch.original_hw, batch.ratios, out_hw=batch.out_hw,
                      intermediates=intermediates)
