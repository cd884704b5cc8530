"""Validation of a rap_jax config before anything is built from it.

`check_config` collects every problem of a config (enumerations, ranges, shapes that the modules
assume, consistency between sub-dicts) and raises one `ConfigError` whose message names each bad
key with its value, so that a wrong `--config.a.b=value` fails at start-up, not deep inside jit.
`unknown_override_message` explains a `--config.a.b=...` whose key does not exist (ml_collections
only reports the last path element).
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from configs import common
from rap_jax.data import categories

MODES = ("train", "eval", "predict")
# config.train.loss_normalization (rap_jax.modeling.losses.group_normalize)
LOSS_NORMALIZATIONS = ("per_device", "global")
DATA_NAMES = ("coco", "synthetic")
# The FPN levels P2..P6 (RPN anchors) and P2..P5 (ROI poolers) of every original config.
NUM_RPN_LEVELS = 5
NUM_POOLER_LEVELS = 4
# The coarsest FPN level the padded image must divide into (P5 stride 32).
FPN_STRIDE = 32


class ConfigError(ValueError):
  """A config value that rap_jax cannot run with; the message names every bad key."""


class _Problems:
  """Collects `key=value: reason` lines."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.lines: list[str] = []

  def get(self, key: str) -> Any:
    node = self.config
    for part in key.split("."):
      node = node[part]
    return node

  def add(self, key: str, reason: str) -> None:
    try:
      value = self.get(key)
    except (KeyError, AttributeError):
      self.lines.append(f"{key}: missing ({reason})")
      return
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    self.lines.append(f"{key}={value!r}: {reason}")

  def require(self, key: str, ok: Callable[[Any], bool], reason: str) -> bool:
    try:
      value = self.get(key)
      good = bool(ok(value))
    except (KeyError, AttributeError):
      self.lines.append(f"{key}: missing ({reason})")
      return False
    except (TypeError, ValueError):
      good = False
    if not good:
      self.add(key, reason)
    return good

  def one_of(self, key: str, allowed: Sequence[Any]) -> bool:
    return self.require(key, lambda v: v in allowed, f"must be one of {tuple(allowed)}")

  def unit(self, *keys: str) -> None:
    for key in keys:
      self.require(key, lambda v: 0.0 <= float(v) <= 1.0, "must be in [0, 1]")

  def positive(self, *keys: str) -> None:
    for key in keys:
      self.require(key, lambda v: v > 0, "must be > 0")

  def non_negative(self, *keys: str) -> None:
    for key in keys:
      self.require(key, lambda v: v >= 0, "must be >= 0")


def _is_pair_list(value: Any) -> bool:
  return len(value) > 0 and all(len(c) == 2 and all(int(x) > 0 for x in c) for c in value)


def _check_model(p: _Problems) -> None:
  if "nms_compare" in p.config.model:
    p.one_of("model.nms_compare", ("cuda", "cpu"))
  p.one_of("model.backbone.depth", tuple(common.BLOCKS))
  p.positive("model.backbone.num_groups", "model.backbone.width_per_group",
             "model.backbone.stem_out_channels", "model.backbone.res2_out_channels",
             "model.backbone.deformable_groups", "model.fpn.out_channels")
  p.require("model.backbone.stage_with_dcn",
            lambda v: len(v) == 4 and all(isinstance(x, bool) for x in v),
            "must be 4 booleans (res2..res5)")
  p.require("model.backbone.freeze_at", lambda v: 0 <= v <= 5, "must be in 0..5")
  _check_group_norm(p)

  rpn = "model.rpn"
  p.require(f"{rpn}.anchor_sizes", lambda v: len(v) == NUM_RPN_LEVELS and min(v) > 0,
            f"must be {NUM_RPN_LEVELS} positive sizes, one per FPN level P2..P6")
  p.require(f"{rpn}.anchor_strides", lambda v: len(v) == NUM_RPN_LEVELS and min(v) > 0,
            f"must be {NUM_RPN_LEVELS} positive strides, one per FPN level P2..P6")
  p.require(f"{rpn}.aspect_ratios", lambda v: len(v) > 0 and min(v) > 0,
            "must be positive ratios")
  p.unit(f"{rpn}.nms_thresh", f"{rpn}.fg_iou_threshold", f"{rpn}.bg_iou_threshold",
         f"{rpn}.positive_fraction")
  p.positive(*(f"{rpn}.{k}_nms_top_n_{s}" for k in ("pre", "post", "fpn_post")
               for s in ("test", "train")), f"{rpn}.batch_size_per_image")
  p.non_negative(f"{rpn}.min_size")
  for matcher in (rpn, "model.roi_heads.box"):
    p.require(f"{matcher}.bg_iou_threshold",
              lambda v, m=matcher: v <= p.get(f"{m}.fg_iou_threshold"),
              f"must be <= {matcher}.fg_iou_threshold")

  box = "model.roi_heads.box"
  num_classes = categories.NUM_THING_CLASSES + 1
  for head in (box, "model.roi_heads.mask"):
    p.require(f"{head}.num_classes", lambda v: v == num_classes,
              f"must be {num_classes} (80 COCO thing classes + background, data/categories.py)")
    p.require(f"{head}.pooler_scales",
              lambda v: len(v) == NUM_POOLER_LEVELS and min(v) > 0,
              f"must be {NUM_POOLER_LEVELS} positive scales, one per FPN level P2..P5")
    p.positive(f"{head}.pooler_resolution", f"{head}.pooler_sampling_ratio")
  p.positive(f"{box}.mlp_head_dim", f"{box}.detections_per_img", f"{box}.batch_size_per_image")
  p.unit(f"{box}.score_thresh", f"{box}.nms_thresh", f"{box}.fg_iou_threshold",
         f"{box}.bg_iou_threshold", f"{box}.positive_fraction")
  p.require(f"{box}.bbox_reg_weights", lambda v: len(v) == 4 and min(v) > 0,
            "must be 4 positive weights (wx, wy, ww, wh)")
  p.require(f"{box}.max_detections",
            lambda v: v >= p.get(f"{box}.detections_per_img"),
            "must be >= model.roi_heads.box.detections_per_img (static detection slots)")

  mask = "model.roi_heads.mask"
  p.require(f"{mask}.conv_layers", lambda v: len(v) > 0 and min(v) > 0,
            "must be positive conv widths")
  p.require(f"{mask}.resolution", lambda v: v == 2 * p.get(f"{mask}.pooler_resolution"),
            "must be 2 x pooler_resolution (the predictor is a stride-2 deconvolution)")

  rel = "model.roi_heads.relation"
  p.one_of(f"{rel}.kind", common.RELATION_KINDS)
  p.positive(f"{rel}.conv_dim", f"{rel}.mlp_head_dim", f"{rel}.oc_conv_dim",
             f"{rel}.oc_mlp_head_dim", f"{rel}.oc_pair_chunk", f"{rel}.oc_train_pairs")
  p.non_negative(f"{rel}.loss_weight")

  sem = "model.semantic"
  p.require(f"{sem}.num_classes", lambda v: v == categories.NUM_STUFF_CLASSES + 1,
            f"must be {categories.NUM_STUFF_CLASSES + 1} (53 stuff + 1 thing channel; "
            "55 outputs with void)")
  p.positive(f"{sem}.conv_dim", f"{sem}.num_groups")
  p.require(f"{sem}.conv_dim", lambda v: v % p.get(f"{sem}.num_groups") == 0,
            "must be divisible by model.semantic.num_groups (GroupNorm)")
  p.non_negative(f"{sem}.loss_weight")
  for key in (f"{rpn}.in_channels", f"{box}.in_channels", f"{mask}.in_channels",
              f"{rel}.in_channels", f"{sem}.in_channels"):
    p.require(key, lambda v: v == p.get("model.fpn.out_channels"),
              "must equal model.fpn.out_channels (every head reads the FPN features)")


def _gn_widths(p: _Problems) -> dict[str, list[int]]:
  """Config key -> the channel counts that get `group_norm(C)` (MODEL.GROUP_NORM) through it."""
  b, box, mask = "model.backbone", "model.roi_heads.box", "model.roi_heads.mask"
  widths: dict[str, list[int]] = {}
  stem, res2 = p.get(f"{b}.stem_out_channels"), p.get(f"{b}.res2_out_channels")
  bott = p.get(f"{b}.num_groups") * p.get(f"{b}.width_per_group")
  if p.get(f"{b}.stem_func") == "StemWithGN":
    widths[f"{b}.stem_func"] = [stem]
  if p.get(f"{b}.trans_func") == "BottleneckWithGN":
    widths[f"{b}.trans_func"] = [w * 2 ** i for i in range(4) for w in (bott, res2)]
  if p.get("model.fpn.use_gn"):
    widths["model.fpn.use_gn"] = [p.get("model.fpn.out_channels")]
  if p.get(f"{box}.use_gn"):
    xconv = p.get(f"{box}.extractor") == "FPNXconv1fcFeatureExtractor"
    widths[f"{box}.use_gn"] = [p.get(f"{box}.conv_head_dim" if xconv else f"{box}.mlp_head_dim")]
  if p.get(f"{mask}.use_gn"):
    widths[f"{mask}.use_gn"] = list(p.get(f"{mask}.conv_layers"))
  return widths


def _check_group_norm(p: _Problems) -> None:
  """The *WithGN / USE_GN options and MODEL.GROUP_NORM (`get_group_gn` asserts, up front)."""
  before = len(p.lines)
  p.one_of("model.backbone.stem_func", common.STEM_FUNCS)
  p.one_of("model.backbone.trans_func", common.TRANS_FUNCS)
  box = "model.roi_heads.box"
  p.one_of(f"{box}.extractor", common.BOX_EXTRACTORS)
  p.positive(f"{box}.num_stacked_convs", f"{box}.conv_head_dim")
  gn = "model.group_norm"
  p.positive(f"{gn}.epsilon")
  p.require(f"{gn}.dim_per_gp", lambda v: (v == -1) != (p.get(f"{gn}.num_groups") == -1),
            f"exactly one of {gn}.dim_per_gp and {gn}.num_groups must be -1")
  p.require(f"{gn}.dim_per_gp", lambda v: v == -1 or v > 0, "must be -1 or > 0")
  p.require(f"{gn}.num_groups", lambda v: v == -1 or v > 0, "must be -1 or > 0")
  if len(p.lines) > before:  # the widths below need every key above to be valid
    return
  dim, groups = p.get(f"{gn}.dim_per_gp"), p.get(f"{gn}.num_groups")
  divisor, what = (dim, "dim_per_gp") if dim > 0 else (groups, "num_groups")
  try:
    widths_by_key = _gn_widths(p)
  except (TypeError, ValueError):  # a bad width key, reported by its own check
    return
  for key, widths in widths_by_key.items():
    bad = sorted({w for w in widths if w % divisor})
    if bad:
      p.add(key, f"GroupNorm widths {bad} are not divisible by {gn}.{what}={divisor}")


def _check_input(p: _Problems) -> None:
  p.positive("input.min_size_test", "input.max_size_test", "input.max_size_train")
  p.require("input.min_size_test", lambda v: v <= p.get("input.max_size_test"),
            "must be <= input.max_size_test")
  p.require("input.min_size_train", lambda v: len(v) > 0 and min(v) > 0,
            "must be positive sizes")
  p.require("input.pixel_mean", lambda v: len(v) == 3, "must be 3 values (B, G, R)")
  p.require("input.pixel_std", lambda v: len(v) == 3 and min(v) > 0,
            "must be 3 positive values (B, G, R)")
  p.unit("input.flip_prob")
  div_ok = p.require("input.size_divisibility", lambda v: v > 0 and v % FPN_STRIDE == 0,
                     f"must be a positive multiple of {FPN_STRIDE} (the FPN's coarsest stride)")
  if not p.require("input.canvas_sizes", _is_pair_list, "must be (height, width) pairs"):
    return
  if not div_ok:
    return
  div = p.get("input.size_divisibility")
  canvases = [tuple(int(x) for x in c) for c in p.get("input.canvas_sizes")]
  p.require("input.canvas_sizes", lambda v: all(h % div == 0 and w % div == 0 for h, w in v),
            f"every canvas side must be a multiple of input.size_divisibility={div}")
  # The largest padded test image: short side <= min_size_test, long side <= max_size_test.
  short = int(math.ceil(p.get("input.min_size_test") / div) * div)
  long = int(math.ceil(p.get("input.max_size_test") / div) * div)
  for need in ((short, long), (long, short)):
    if not any(h >= need[0] and w >= need[1] for h, w in canvases):
      p.add("input.canvas_sizes", f"no canvas holds a padded test image of size {need} "
            "(min_size_test/max_size_test rounded up to size_divisibility)")


def _check_fusion(p: _Problems) -> None:
  p.one_of("fusion.method", common.FUSION_METHODS)
  p.unit("fusion.confidence_thr", "fusion.overlap_thr", "fusion.large_overlap_thr",
         "fusion.oc_pair_overlap_thr", "postprocess.mask_threshold")
  p.non_negative("fusion.stuff_area_limit", "postprocess.mask_padding")
  p.positive("postprocess.output_size_multiple")
  method, kind = p.get("fusion.method"), p.get("model.roi_heads.relation.kind")
  if method in ("rap", "ocfusion") and kind != method:
    p.add("fusion.method", f"needs model.roi_heads.relation.kind={method!r} "
          f"(the {method} fusion reads that head's output), got {kind!r}")


def _check_modes(p: _Problems, modes: Iterable[str]) -> None:
  p.require("modes", lambda v: len(v) > 0 and all(m in MODES for m in v),
            f"must be a non-empty tuple of modes from {MODES}")
  p.one_of("data.name", DATA_NAMES)
  p.positive("data.max_instances", "data.shuffle_buffer", "data.synthetic.num_train",
             "data.synthetic.num_val", "data.synthetic.image_size",
             "predict.batch_size", "eval.batch_size")
  p.require("data.synthetic.inset_prob", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
  p.require("data.synthetic.val_seed", lambda v: isinstance(v, int) and v >= -1,
            "must be a seed >= 0, or -1 (the training seed)")
  p.require("eval.max_images", lambda v: v == -1 or v > 0, "must be -1 (all) or > 0")
  t = "train"
  p.one_of(f"{t}.stage", (1, 2))
  p.one_of(f"{t}.loss_normalization", LOSS_NORMALIZATIONS)
  if p.get(f"{t}.stage") == 2:
    p.require("model.roi_heads.relation.kind", lambda v: v != "none",
              "train.stage=2 trains only the relation head: set kind 'rap' or 'ocfusion'")
  p.positive(f"{t}.global_batch_size", f"{t}.base_lr", f"{t}.max_iter",
             f"{t}.checkpoint_period", f"{t}.log_every")
  p.non_negative(f"{t}.bias_lr_factor", f"{t}.momentum", f"{t}.weight_decay",
                 f"{t}.weight_decay_bias", f"{t}.gamma", f"{t}.warmup_iters", f"{t}.start_iter")
  p.require(f"{t}.warmup_factor", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
  p.require(f"{t}.steps", lambda v: all(a < b for a, b in zip(v, v[1:])),
            "must be strictly increasing iterations")
  p.require(f"{t}.start_iter", lambda v: v < p.get(f"{t}.max_iter"),
            "must be < train.max_iter")
  if "predict" in modes:
    p.require("predict.images", lambda v: bool(str(v).strip()),
              "--mode predict needs --config.predict.images=<file, folder or glob pattern>")
  if "train" in modes or "eval" in modes:
    p.require("data.data_dir", lambda v: bool(str(v).strip()), "must name the dataset folder")


def check_config(config: ml_collections.ConfigDict, modes: Iterable[str] = ()) -> None:
  """Raises ConfigError naming every invalid key of `config` (for running `modes`)."""
  modes = tuple(modes)
  p = _Problems(config)
  for section in (_check_model, _check_input, _check_fusion):
    section(p)
  _check_modes(p, modes)
  if p.lines:
    raise ConfigError("invalid config:\n  " + "\n  ".join(p.lines))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file given as `path` or `path:argument` (config_flags syntax)."""
  path, arg = spec, None
  if not os.path.isfile(path) and ":" in spec:
    path, arg = spec.rsplit(":", 1)
  module_spec = importlib.util.spec_from_file_location(f"_config_{pathlib.Path(path).stem}", path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f"config file not found: {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def unknown_override_message(config: ml_collections.ConfigDict, argv: Sequence[str],
                             flag: str = "config") -> str | None:
  """Names the first `--config.a.b=...` in `argv` whose key `a.b` is not in `config`."""
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    path = arg[len(prefix):].split("=", 1)[0]
    node, done = config, []
    for part in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=1)
        where = ".".join(done) or "the config"
        hint = f"; did you mean {'.'.join(done + close)!r}?" if close else ""
        return (f"unknown config key {path!r} in {arg!r}: {where} has no field {part!r}"
                f"{hint}")
      node = node[part]
      done.append(part)
  return None
