"""The two building blocks the 12 original configs differ by: the backbone and the training stage.

SPEC §1.4: every original YAML is `common.get_config()` plus one backbone row and, for the
relation and OCFusion finetunes, the stage-2 schedule (SPEC §6.2). The per-config files call these
two functions and then name their YAML, start weights and output folder explicitly.
"""
from __future__ import annotations

import ml_collections

# CONV_BODY + RESNETS values per backbone name of the original README (SPEC §1.4 "G/W/S1", "DCN").
BACKBONES = {
    "R-50": dict(depth=50, num_groups=1, width_per_group=64, stride_in_1x1=True,
                 stage_with_dcn=(False, False, False, False)),
    "R-101": dict(depth=101, num_groups=1, width_per_group=64, stride_in_1x1=True,
                  stage_with_dcn=(False, False, False, False)),
    "X-101-32x8d": dict(depth=101, num_groups=32, width_per_group=8, stride_in_1x1=False,
                        stage_with_dcn=(False, False, False, False)),
    "X-152-32x8d": dict(depth=152, num_groups=32, width_per_group=8, stride_in_1x1=False,
                        stage_with_dcn=(False, False, False, False)),
    # DCNv1 (WITH_MODULATED_DCN False) in res3..res5, one deformable group.
    "X-152-32x8d-DCN": dict(depth=152, num_groups=32, width_per_group=8, stride_in_1x1=False,
                            stage_with_dcn=(False, True, True, True)),
}

# Fusion thresholds of the finetune YAMLs: RAP 0.6/0.6, OCFusion 0.5/0.5 (LARGE_OVERLAP 0.5 always).
_FUSION_THRESHOLDS = {"rap": (0.6, 0.6), "ocfusion": (0.5, 0.5)}


def set_backbone(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets `config.model.backbone` to the original backbone `name` (a key of BACKBONES)."""
  if name not in BACKBONES:
    raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
  config.model.backbone.update(BACKBONES[name])
  config.model.backbone.deformable_groups = 1


def relation_finetune(config: ml_collections.ConfigDict, kind: str) -> None:
  """Turns a stage-1 config into its stage-2 finetune (SPEC §6.2).

  Only the relation head (`kind` 'rap' or 'ocfusion') is trained, for 10k iterations that continue
  the stage-1 count (150001..160000) at a constant LR 0.002 (no warmup; the single decay step at
  155000 is never reached by the original because its scheduler restarts at 0). Fusion becomes the
  head's own method with the YAML's CONFIDENCE_THR / OVERLAP_THR.
  """
  if kind not in _FUSION_THRESHOLDS:
    raise ValueError(f"relation kind must be one of {sorted(_FUSION_THRESHOLDS)}, got {kind!r}")
  config.model.roi_heads.relation.kind = kind
  config.fusion.method = kind
  config.fusion.confidence_thr, config.fusion.overlap_thr = _FUSION_THRESHOLDS[kind]
  config.fusion.large_overlap_thr = 0.5
  t = config.train
  t.stage = 2
  t.base_lr = 0.002
  t.steps = (155000,)
  t.max_iter = 160000
  t.start_iter = 150000
  t.warmup_iters = 0
  t.checkpoint_period = 5000


def small_widths(config) -> None:
  """The reduced widths of the small fixture models (fixtures README "The small models"):
  stem 8, width per group 8, stage outputs 32/64/128/256, FPN 32, box MLP 128, mask convs 32,
  relation conv 32 / MLP 128, OCFusion conv 64 / MLP 128, semantic 64."""
  b = config.model.backbone
  b.stem_out_channels = 8
  b.width_per_group = 8
  b.res2_out_channels = 32
  config.model.fpn.out_channels = 32  # FieldReference: every head's in_channels follows
  config.model.roi_heads.box.mlp_head_dim = 128
  config.model.roi_heads.mask.conv_layers = (32, 32, 32, 32)
  rel = config.model.roi_heads.relation
  rel.conv_dim = 32
  rel.mlp_head_dim = 128
  rel.oc_conv_dim = 64
  rel.oc_mlp_head_dim = 128
  config.model.semantic.conv_dim = 64


def group_norm_everywhere(config, num_groups: int = 8) -> None:
  """The original's GroupNorm options for training from scratch (maskrcnn-benchmark's
  `*_gn` configs): StemWithGN + BottleneckWithGN with nothing frozen, FPN.USE_GN, the
  FPNXconv1fc box head with USE_GN (4 convs of the FPN width) and ROI_MASK_HEAD.USE_GN, all with
  `num_groups` groups (MODEL.GROUP_NORM.NUM_GROUPS)."""
  b = config.model.backbone
  b.stem_func = "StemWithGN"
  b.trans_func = "BottleneckWithGN"
  b.freeze_at = 0
  config.model.group_norm.update(dim_per_gp=-1, num_groups=num_groups)
  config.model.fpn.use_gn = True
  box = config.model.roi_heads.box
  box.extractor = "FPNXconv1fcFeatureExtractor"
  box.use_gn = True
  box.num_stacked_convs = 4
  box.conv_head_dim = int(config.model.fpn.out_channels)
  config.model.roi_heads.mask.use_gn = True


def synthetic_from_scratch(config, size: int, kind: str) -> None:
  """The from-scratch model and data of the built-in synthetic experiments (configs/demo.py,
  synthetic_rap.py, synthetic_ocfusion.py).

  Model: the small widths (`small_widths`) with GroupNorm everywhere (`group_norm_everywhere`, 8
  groups: what the original trains from scratch with), 200/100 proposals, 64 sampled ROIs per
  image (16 positives: the scenes hold 2-6 objects), 30 detections, relation head `kind` ('rap' |
  'ocfusion') with the stable form of the ranking loss. One square canvas of `size` pixels.
  Data: the synthetic dataset at `size` with insets (`inset_prob` 0.5: a small object in front of
  a larger one, where score order is often the wrong depth order). Fusion: the head's own, with
  the original's 0.5 thresholds; the stuff area limit scaled from 4096 at 800 pixels.
  """
  small_widths(config)
  group_norm_everywhere(config, num_groups=8)
  rel = config.model.roi_heads.relation
  rel.kind = kind
  rel.stable_ranking_loss = True
  rel.oc_train_pairs = 64
  rpn = config.model.rpn
  rpn.pre_nms_top_n_test = rpn.pre_nms_top_n_train = 200
  rpn.post_nms_top_n_test = rpn.post_nms_top_n_train = 100
  rpn.fpn_post_nms_top_n_test = rpn.fpn_post_nms_top_n_train = 100
  rpn.batch_size_per_image = 128
  box = config.model.roi_heads.box
  box.detections_per_img = 30
  box.max_detections = 32
  box.batch_size_per_image = 64

  config.input.min_size_test = config.input.max_size_test = size
  config.input.min_size_train = (size,)
  config.input.max_size_train = size
  config.input.canvas_sizes = ((size, size),)

  config.fusion.method = kind
  config.fusion.confidence_thr = 0.5
  config.fusion.overlap_thr = 0.5
  config.fusion.stuff_area_limit = int(4096 * (size / 800) ** 2)

  config.data.name = "synthetic"
  config.data.max_instances = 16
  config.data.shuffle_buffer = 512
  config.data.synthetic.update(image_size=size, inset_prob=0.5)


def two_stages(config, *, stage1_iters: int, stage2_iters: int, batch: int, base_lr: float,
               warmup: int = 50, stage2_lr: float | None = None) -> None:
  """Both training stages of the original in one run (`train.stages`): stage 1 = Panoptic FPN
  from scratch at `base_lr` (the original: 0.02 for 16 images), linear warmup over `warmup`
  iterations and x0.1 steps at 75% and 92% of the iterations; stage 2 = the relation finetune
  from stage 1's last checkpoint, a fresh relation head the only trained part, at a constant
  `stage2_lr` (default `base_lr`) continuing the iteration count (SPEC §6.2)."""
  t = config.train
  t.global_batch_size = batch
  t.base_lr = base_lr
  t.warmup_iters = warmup
  t.steps = (int(0.75 * stage1_iters), int(0.92 * stage1_iters))
  t.max_iter = stage1_iters
  t.checkpoint_period = max(stage1_iters // 4, 1)
  t.log_every = 20
  t.stages = (
      {"train.stage": 1, "model.roi_heads.relation.kind": "none", "fusion.method": "heuristic"},
      {"train.stage": 2, "train.start_iter": stage1_iters,
       "train.max_iter": stage1_iters + stage2_iters,
       "train.base_lr": t.base_lr if stage2_lr is None else stage2_lr,
       "train.steps": (10 ** 9,), "train.warmup_iters": 0,
       "train.checkpoint_period": stage2_iters},
  )
