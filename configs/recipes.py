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
