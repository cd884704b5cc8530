"""Every config builds, validates, and reproduces the original's values (SPEC §1, fixture YAMLs).

The original's values are written here as yacs keys: `YACS_TO_CONFIG` maps each key that matters
to our config path. The three fixture YAMLs (full merged `cfg.dump()`s of the original) are checked
key by key; the 12 full-size configs are checked against SPEC §1.2/§1.3 (`BASE`) plus their row of
the SPEC §1.4 table (`TABLE`), and BASE itself is cross-checked against the R-50 fixture YAML.
"""
from __future__ import annotations

import importlib
import pathlib
import re

import ml_collections
import pytest
import yaml

from configs import common, recipes
from rap_jax import config_checks
from rap_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
FULL_CONFIGS = tuple(f"{kind}_{body}" for kind in ("panoptic_fpn", "rap")
                     for body in ("r50", "r101", "x101", "x152", "x152_dcn")) + (
                         "ocfusion_r50", "ocfusion_r101")
FIXTURE_CONFIGS = {"fixtures.rap_small": "rap_small_config.yaml",
                   "fixtures.ocfusion_small": "ocfusion_small_config.yaml",
                   "fixtures.rap_x101_small": "rap_x101_small_config.yaml"}
# Every get_config() file under configs/ (new ones are picked up by the build/validate test).
ALL_CONFIGS = tuple(sorted(
    ".".join(p.relative_to(REPO / "configs").with_suffix("").parts)
    for p in (REPO / "configs").rglob("*.py") if p.stem not in ("__init__", "recipes")))


def _tuple(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


# yacs key -> (our config path, yacs value -> our value).
YACS_TO_CONFIG = {
    "MODEL.BACKBONE.CONV_BODY": ("model.backbone.depth", lambda v: int(v.split("-")[1])),
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": ("model.backbone.freeze_at", None),
    "MODEL.RESNETS.NUM_GROUPS": ("model.backbone.num_groups", None),
    "MODEL.RESNETS.WIDTH_PER_GROUP": ("model.backbone.width_per_group", None),
    "MODEL.RESNETS.STRIDE_IN_1X1": ("model.backbone.stride_in_1x1", None),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": ("model.backbone.stem_out_channels", None),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": ("model.backbone.res2_out_channels", None),
    "MODEL.RESNETS.STAGE_WITH_DCN": ("model.backbone.stage_with_dcn", _tuple),
    "MODEL.RESNETS.DEFORMABLE_GROUPS": ("model.backbone.deformable_groups", None),
    "MODEL.RESNETS.STEM_FUNC": ("model.backbone.stem_func", None),
    "MODEL.RESNETS.TRANS_FUNC": ("model.backbone.trans_func", None),
    "MODEL.GROUP_NORM.DIM_PER_GP": ("model.group_norm.dim_per_gp", None),
    "MODEL.GROUP_NORM.NUM_GROUPS": ("model.group_norm.num_groups", None),
    "MODEL.GROUP_NORM.EPSILON": ("model.group_norm.epsilon", None),
    "MODEL.FPN.USE_GN": ("model.fpn.use_gn", None),
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": ("model.fpn.out_channels", None),
    "MODEL.RPN.ANCHOR_SIZES": ("model.rpn.anchor_sizes", _tuple),
    "MODEL.RPN.ANCHOR_STRIDE": ("model.rpn.anchor_strides", _tuple),
    "MODEL.RPN.ASPECT_RATIOS": ("model.rpn.aspect_ratios", _tuple),
    "MODEL.RPN.STRADDLE_THRESH": ("model.rpn.straddle_thresh", None),
    "MODEL.RPN.NMS_THRESH": ("model.rpn.nms_thresh", None),
    "MODEL.RPN.MIN_SIZE": ("model.rpn.min_size", None),
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": ("model.rpn.pre_nms_top_n_test", None),
    "MODEL.RPN.POST_NMS_TOP_N_TEST": ("model.rpn.post_nms_top_n_test", None),
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST": ("model.rpn.fpn_post_nms_top_n_test", None),
    "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": ("model.rpn.pre_nms_top_n_train", None),
    "MODEL.RPN.POST_NMS_TOP_N_TRAIN": ("model.rpn.post_nms_top_n_train", None),
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN": ("model.rpn.fpn_post_nms_top_n_train", None),
    "MODEL.RPN.FG_IOU_THRESHOLD": ("model.rpn.fg_iou_threshold", None),
    "MODEL.RPN.BG_IOU_THRESHOLD": ("model.rpn.bg_iou_threshold", None),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": ("model.rpn.batch_size_per_image", None),
    "MODEL.RPN.POSITIVE_FRACTION": ("model.rpn.positive_fraction", None),
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": ("model.roi_heads.box.pooler_resolution", None),
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": ("model.roi_heads.box.pooler_scales", _tuple),
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": ("model.roi_heads.box.pooler_sampling_ratio",
                                                 None),
    "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": ("model.roi_heads.box.mlp_head_dim", None),
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": ("model.roi_heads.box.extractor", None),
    "MODEL.ROI_BOX_HEAD.USE_GN": ("model.roi_heads.box.use_gn", None),
    "MODEL.ROI_BOX_HEAD.NUM_STACKED_CONVS": ("model.roi_heads.box.num_stacked_convs", None),
    "MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM": ("model.roi_heads.box.conv_head_dim", None),
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": ("model.roi_heads.box.num_classes", None),
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": ("model.roi_heads.box.bbox_reg_weights", _tuple),
    "MODEL.ROI_HEADS.SCORE_THRESH": ("model.roi_heads.box.score_thresh", None),
    "MODEL.ROI_HEADS.NMS": ("model.roi_heads.box.nms_thresh", None),
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": ("model.roi_heads.box.detections_per_img", None),
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": ("model.roi_heads.box.fg_iou_threshold", None),
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": ("model.roi_heads.box.bg_iou_threshold", None),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": ("model.roi_heads.box.batch_size_per_image", None),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": ("model.roi_heads.box.positive_fraction", None),
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": ("model.roi_heads.mask.pooler_resolution", None),
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": ("model.roi_heads.mask.pooler_scales", _tuple),
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": ("model.roi_heads.mask.pooler_sampling_ratio",
                                                  None),
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": ("model.roi_heads.mask.conv_layers", _tuple),
    "MODEL.ROI_MASK_HEAD.RESOLUTION": ("model.roi_heads.mask.resolution", None),
    "MODEL.ROI_MASK_HEAD.USE_GN": ("model.roi_heads.mask.use_gn", None),
    "MODEL.RELATION_LOSS_WEIGHT": ("model.roi_heads.relation.loss_weight", None),
    "MODEL.SEMANTIC.NUM_CLASSES": ("model.semantic.num_classes", None),
    "MODEL.SEMANTIC.LOSS_WEIGHT": ("model.semantic.loss_weight", None),
    "MODEL.SEMANTIC.COMBINE_METHOD": ("fusion.method", str.lower),
    "MODEL.SEMANTIC.CONFIDENCE_THR": ("fusion.confidence_thr", None),
    "MODEL.SEMANTIC.OVERLAP_THR": ("fusion.overlap_thr", None),
    "MODEL.SEMANTIC.LARGE_OVERLAP_THR": ("fusion.large_overlap_thr", None),
    "MODEL.SEMANTIC.STUFF_AREA_LIMIT": ("fusion.stuff_area_limit", None),
    "INPUT.MIN_SIZE_TEST": ("input.min_size_test", None),
    "INPUT.MAX_SIZE_TEST": ("input.max_size_test", None),
    "INPUT.MIN_SIZE_TRAIN": ("input.min_size_train", _tuple),
    "INPUT.MAX_SIZE_TRAIN": ("input.max_size_train", None),
    "INPUT.PIXEL_MEAN": ("input.pixel_mean", _tuple),
    "INPUT.PIXEL_STD": ("input.pixel_std", _tuple),
    "DATALOADER.SIZE_DIVISIBILITY": ("input.size_divisibility", None),
    "SOLVER.BASE_LR": ("train.base_lr", None),
    "SOLVER.BIAS_LR_FACTOR": ("train.bias_lr_factor", None),
    "SOLVER.MOMENTUM": ("train.momentum", None),
    "SOLVER.WEIGHT_DECAY": ("train.weight_decay", None),
    "SOLVER.WEIGHT_DECAY_BIAS": ("train.weight_decay_bias", None),
    "SOLVER.GAMMA": ("train.gamma", None),
    "SOLVER.STEPS": ("train.steps", _tuple),
    "SOLVER.MAX_ITER": ("train.max_iter", None),
    "SOLVER.WARMUP_FACTOR": ("train.warmup_factor", None),
    "SOLVER.WARMUP_ITERS": ("train.warmup_iters", None),
    "SOLVER.CHECKPOINT_PERIOD": ("train.checkpoint_period", None),
    "SOLVER.IMS_PER_BATCH": ("train.global_batch_size", None),
    "SOLVER.FINETUNE": ("train.stage", lambda v: 2 if v else 1),
    "MODEL.WEIGHT": ("original_weight", None),
    "OUTPUT_DIR": ("original_output_dir", None),
}

# Values the implementation assumes rather than reads (one architecture, SPEC §1.2/§1.3):
# every original YAML, hence every fixture YAML, must have exactly these.
FIXED_BY_IMPLEMENTATION = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": True,
    "MODEL.RPN_ONLY": False,
    "MODEL.RETINANET_ON": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.MASKIOU_ON": False,
    "MODEL.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.BACKBONE.USE_GN": False,
    "MODEL.FPN.USE_RELU": False,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.WITH_MODULATED_DCN": False,
    "MODEL.RPN.USE_FPN": True,
    "MODEL.RPN.RPN_HEAD": "SingleConvRPNHead",
    "MODEL.RPN.FPN_POST_NMS_PER_BATCH": False,
    "MODEL.ROI_HEADS.USE_FPN": True,
    "MODEL.ROI_BOX_HEAD.PREDICTOR": "FPNPredictor",
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR": "MaskRCNNFPNFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.PREDICTOR": "MaskRCNNC4Predictor",
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": False,
    "MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS": False,
    "MODEL.ROI_MASK_HEAD.DILATION": 1,
    "INPUT.TO_BGR255": True,
    "INPUT.BRIGHTNESS": 0.0, "INPUT.CONTRAST": 0.0, "INPUT.SATURATION": 0.0, "INPUT.HUE": 0.0,
    "SOLVER.WARMUP_METHOD": "linear",
    "DTYPE": "float32",
}

# SPEC §1.2 defaults + §1.3 keys common to the 12 YAMLs: R-50 stage-1 values.
BASE = {
    "MODEL.BACKBONE.CONV_BODY": "R-50-FPN", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": 2,
    "MODEL.RESNETS.NUM_GROUPS": 1, "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True, "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256, "MODEL.RESNETS.STAGE_WITH_DCN": [False] * 4,
    "MODEL.RESNETS.DEFORMABLE_GROUPS": 1, "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_FUNC": "StemWithFixedBatchNorm",
    "MODEL.RESNETS.TRANS_FUNC": "BottleneckWithFixedBatchNorm",
    "MODEL.GROUP_NORM.DIM_PER_GP": -1, "MODEL.GROUP_NORM.NUM_GROUPS": 32,
    "MODEL.GROUP_NORM.EPSILON": 1e-5, "MODEL.FPN.USE_GN": False,
    "MODEL.RPN.ANCHOR_SIZES": [32, 64, 128, 256, 512],
    "MODEL.RPN.ANCHOR_STRIDE": [4, 8, 16, 32, 64],
    "MODEL.RPN.ASPECT_RATIOS": [0.5, 1.0, 2.0], "MODEL.RPN.STRADDLE_THRESH": 0,
    "MODEL.RPN.NMS_THRESH": 0.7, "MODEL.RPN.MIN_SIZE": 0,
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": 1000, "MODEL.RPN.POST_NMS_TOP_N_TEST": 1000,
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST": 1000, "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 2000, "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN": 2000,
    "MODEL.RPN.FG_IOU_THRESHOLD": 0.7, "MODEL.RPN.BG_IOU_THRESHOLD": 0.3,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256, "MODEL.RPN.POSITIVE_FRACTION": 0.5,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": [0.25, 0.125, 0.0625, 0.03125],
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2, "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": 81,
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": "FPN2MLPFeatureExtractor",
    "MODEL.ROI_BOX_HEAD.USE_GN": False, "MODEL.ROI_BOX_HEAD.NUM_STACKED_CONVS": 4,
    "MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM": 256, "MODEL.ROI_MASK_HEAD.USE_GN": False,
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_HEADS.SCORE_THRESH": 0.05, "MODEL.ROI_HEADS.NMS": 0.5,
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": 100, "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": 0.5,
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": 0.5, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": [0.25, 0.125, 0.0625, 0.03125],
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 2,
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [256, 256, 256, 256], "MODEL.ROI_MASK_HEAD.RESOLUTION": 28,
    "MODEL.RELATION_LOSS_WEIGHT": 1.0, "MODEL.RELATION_ON": False,
    "MODEL.SEMANTIC.NUM_CLASSES": 54, "MODEL.SEMANTIC.LOSS_WEIGHT": 0.5,
    "MODEL.SEMANTIC.COMBINE_METHOD": "heuristic", "MODEL.SEMANTIC.CONFIDENCE_THR": 0.5,
    "MODEL.SEMANTIC.OVERLAP_THR": 0.5, "MODEL.SEMANTIC.LARGE_OVERLAP_THR": 0.5,
    "MODEL.SEMANTIC.STUFF_AREA_LIMIT": 4096,
    "INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TEST": 1333, "INPUT.MIN_SIZE_TRAIN": [800],
    "INPUT.MAX_SIZE_TRAIN": 1333, "INPUT.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "INPUT.PIXEL_STD": [1.0, 1.0, 1.0], "DATALOADER.SIZE_DIVISIBILITY": 32,
    "SOLVER.BASE_LR": 0.02, "SOLVER.BIAS_LR_FACTOR": 2, "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 0.0001, "SOLVER.WEIGHT_DECAY_BIAS": 0, "SOLVER.GAMMA": 0.1,
    "SOLVER.STEPS": [80000, 120000], "SOLVER.MAX_ITER": 150000,
    "SOLVER.WARMUP_FACTOR": 1.0 / 3, "SOLVER.WARMUP_ITERS": 500, "SOLVER.CHECKPOINT_PERIOD": 10000,
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.FINETUNE": False,
    "MODEL.WEIGHT": "catalog://ImageNetPretrained/MSRA/R-50",
    "OUTPUT_DIR": "output_coco_panoptic_R_50/",
}

_C2_X152 = "catalog://Caffe2Detectron/COCO/37129812/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x"
_DCN = [False, True, True, True]
# SPEC §1.4: config -> (YAML stem, CONV_BODY, G, W, S1, DCN, RELATION_ON, COMBINE, CONF=OVERLAP,
#                       IMS, FINETUNE, MODEL.WEIGHT, OUTPUT_DIR, reported PQ).
TABLE = {
    "panoptic_fpn_r50": ("R_50_FPN_1x", "R-50-FPN", 1, 64, True, None, False, "heuristic", 0.5, 16,
                         False, "catalog://ImageNetPretrained/MSRA/R-50",
                         "output_coco_panoptic_R_50/", 40.0),
    "rap_r50": ("R_50_FPN_1x_relation_finetune", "R-50-FPN", 1, 64, True, None, True, "RAP", 0.6,
                16, True, "output_coco_panoptic_R_50/model_final.pth",
                "output_coco_panoptic_R_50_relation_finetune/", 41.8),
    "ocfusion_r50": ("R_50_FPN_1x_ocfusion_finetune", "R-50-FPN", 1, 64, True, None, True,
                     "ocfusion", 0.5, 16, True, "output_coco_panoptic_R_50/model_final.pth",
                     "output_coco_panoptic_R_50_ocfusion_finetune/", 40.7),
    "panoptic_fpn_r101": ("R_101_FPN_1x", "R-101-FPN", 1, 64, True, None, False, "heuristic", 0.5,
                          16, False, "catalog://ImageNetPretrained/MSRA/R-101",
                          "output_coco_panoptic_R_101/", 41.4),
    "rap_r101": ("R_101_FPN_1x_relation_finetune", "R-101-FPN", 1, 64, True, None, True, "RAP",
                 0.6, 16, True, "output_coco_panoptic_R_101/model_final.pth",
                 "output_coco_panoptic_R_101_relation_finetune/", 43.3),
    "ocfusion_r101": ("R_101_FPN_1x_ocfusion_finetune", "R-101-FPN", 1, 64, True, None, True,
                      "ocfusion", 0.5, 16, True, "output_coco_panoptic_R_101/model_final.pth",
                      "output_coco_panoptic_R_101_ocfusion_finetune/", 42.5),
    "panoptic_fpn_x101": ("X_101_32x8d_FPN_1x", "R-101-FPN", 32, 8, False, None, False,
                          "heuristic", 0.5, 16, False,
                          "catalog://ImageNetPretrained/FAIR/20171220/X-101-32x8d",
                          "output_coco_panoptic_X_101_32x8d/", 43.4),
    "rap_x101": ("X_101_32x8d_FPN_1x_relation_finetune", "R-101-FPN", 32, 8, False, None, True,
                 "RAP", 0.6, 16, True, "output_coco_panoptic_X_101_32x8d/model_final.pth",
                 "output_coco_panoptic_X_101_32x8d_relation_finetune/", 45.7),
    "panoptic_fpn_x152": ("X_152_32x8d_FPN_1x", "R-152-FPN", 32, 8, False, None, False,
                          "heuristic", 0.5, 16, False, _C2_X152,
                          "output_coco_panoptic_X_152_32x8d/", 44.6),
    "rap_x152": ("X_152_32x8d_FPN_1x_relation_finetune", "R-152-FPN", 32, 8, False, None, True,
                 "RAP", 0.6, 12, True, "output_coco_panoptic_X_152_32x8d/model_final.pth",
                 "output_coco_panoptic_X_152_32x8d_relation_finetune/", 46.9),
    "panoptic_fpn_x152_dcn": ("X_152_32x8d_dcn_FPN_1x", "R-152-FPN", 32, 8, False, _DCN, False,
                              "heuristic", 0.5, 16, False, _C2_X152,
                              "output_coco_panoptic_X_152_32x8d_dcn/", 47.0),
    "rap_x152_dcn": ("X_152_32x8d_dcn_FPN_1x_relation_finetune", "R-152-FPN", 32, 8, False, _DCN,
                     True, "RAP", 0.6, 12, True,
                     "output_coco_panoptic_X_152_32x8d_dcn/model_final.pth",
                     "output_coco_panoptic_X_152_32x8d_dcn_relation_finetune/", 49.4),
}

# Stage-2 schedule (SPEC §1.4, §6.2) shared by every FINETUNE row.
FINETUNE_SOLVER = {"SOLVER.BASE_LR": 0.002, "SOLVER.STEPS": [155000], "SOLVER.MAX_ITER": 160000,
                   "SOLVER.WARMUP_ITERS": 0, "SOLVER.CHECKPOINT_PERIOD": 5000}

# The small models' width overrides (fixtures README "The small models").
SMALL_WIDTHS = {"MODEL.RESNETS.STEM_OUT_CHANNELS": 8, "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
                "MODEL.RESNETS.RES2_OUT_CHANNELS": 32, "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 32,
                "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 128, "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [32] * 4,
                "INPUT.MIN_SIZE_TEST": 320, "INPUT.MAX_SIZE_TEST": 475, "MODEL.WEIGHT": ""}
# Widths the original hard-codes (fixtures README, keys marked *): yacs-like key -> our path.
HEAD_WIDTHS = {"MODEL.ROI_RELATION_HEAD.CONV_DIM": "model.roi_heads.relation.conv_dim",
               "MODEL.ROI_RELATION_HEAD.MLP_HEAD_DIM": "model.roi_heads.relation.mlp_head_dim",
               "MODEL.ROI_RELATION_HEAD.OC_CONV_DIM": "model.roi_heads.relation.oc_conv_dim",
               "MODEL.ROI_RELATION_HEAD.OC_MLP_HEAD_DIM":
                   "model.roi_heads.relation.oc_mlp_head_dim",
               "MODEL.SEMANTIC.CONV_DIM": "model.semantic.conv_dim"}
FULL_HEAD_WIDTHS = {"MODEL.ROI_RELATION_HEAD.CONV_DIM": 256,
                    "MODEL.ROI_RELATION_HEAD.MLP_HEAD_DIM": 1024,
                    "MODEL.ROI_RELATION_HEAD.OC_CONV_DIM": 512,
                    "MODEL.ROI_RELATION_HEAD.OC_MLP_HEAD_DIM": 1024,
                    "MODEL.SEMANTIC.CONV_DIM": 128}


def _load(name: str) -> ml_collections.ConfigDict:
  return importlib.import_module(f"configs.{name}").get_config()


def _get(config: ml_collections.ConfigDict, path: str):
  for part in path.split("."):
    config = config[part]
  return config


def _flatten_yaml(node: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in node.items():
    if isinstance(value, dict):
      flat.update(_flatten_yaml(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _expected_full(name: str) -> dict:
  """The merged yacs values of one of the 12 original YAMLs (BASE + its TABLE row)."""
  (_, body, groups, width, s1, dcn, relation_on, combine, thr, ims, finetune, weight, out_dir,
   _) = TABLE[name]
  yacs = dict(BASE)
  yacs.update({"MODEL.BACKBONE.CONV_BODY": body, "MODEL.RESNETS.NUM_GROUPS": groups,
               "MODEL.RESNETS.WIDTH_PER_GROUP": width, "MODEL.RESNETS.STRIDE_IN_1X1": s1,
               "MODEL.RESNETS.STAGE_WITH_DCN": dcn or [False] * 4, "MODEL.RELATION_ON": relation_on,
               "MODEL.SEMANTIC.COMBINE_METHOD": combine, "MODEL.SEMANTIC.CONFIDENCE_THR": thr,
               "MODEL.SEMANTIC.OVERLAP_THR": thr, "SOLVER.IMS_PER_BATCH": ims,
               "SOLVER.FINETUNE": finetune, "MODEL.WEIGHT": weight, "OUTPUT_DIR": out_dir})
  if finetune:
    yacs.update(FINETUNE_SOLVER)
  return yacs


def _mismatches(config: ml_collections.ConfigDict, yacs: dict) -> list[str]:
  """Every mapped yacs value that our config does not reproduce."""
  bad = []
  for key, (path, convert) in YACS_TO_CONFIG.items():
    want = (convert or _tuple)(yacs[key])
    got = _get(config, path)
    if _tuple(got) != want or type(want) is bool and type(got) is not bool:
      bad.append(f"{key} = {yacs[key]!r} -> {path}: expected {want!r}, got {got!r}")
  combine = yacs["MODEL.SEMANTIC.COMBINE_METHOD"].lower()
  kind = combine if yacs["MODEL.RELATION_ON"] and combine != "heuristic" else "none"
  if config.model.roi_heads.relation.kind != kind:
    bad.append(f"RELATION_ON/COMBINE_METHOD -> model.roi_heads.relation.kind: expected {kind!r}, "
               f"got {config.model.roi_heads.relation.kind!r}")
  want_start = 150000 if yacs["SOLVER.FINETUNE"] else 0  # the stage-1 checkpoint's iteration
  if config.train.start_iter != want_start:
    bad.append(f"train.start_iter: expected {want_start}, got {config.train.start_iter}")
  if config.model.roi_heads.mask.num_classes != yacs["MODEL.ROI_BOX_HEAD.NUM_CLASSES"]:
    bad.append("model.roi_heads.mask.num_classes != ROI_BOX_HEAD.NUM_CLASSES")
  if config.model.semantic.num_groups != 32:  # GroupNorm(32, C) is hard-coded in the original
    bad.append(f"model.semantic.num_groups: expected 32, got {config.model.semantic.num_groups}")
  for key, path in HEAD_WIDTHS.items():
    want = yacs.get(key, FULL_HEAD_WIDTHS[key])
    if _get(config, path) != want:
      bad.append(f"{key} -> {path}: expected {want}, got {_get(config, path)}")
  return bad


def _key_tree(config: ml_collections.ConfigDict) -> dict:
  return {k: _key_tree(v) if isinstance(v, ml_collections.ConfigDict) else None
          for k, v in config.items()}


@pytest.fixture(scope="module")
def fixture_yamls(fixtures_dir) -> dict[str, dict]:
  return {name: _flatten_yaml(yaml.safe_load((fixtures_dir / file).read_text()))
          for name, file in FIXTURE_CONFIGS.items()}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_validates_and_has_every_key(name):
  config = _load(name)
  config_checks.check_config(config, ("train", "eval"))
  # Every sub-dict is complete: the modules read the keys of common.py, no more, no less.
  assert _key_tree(config) == _key_tree(common.get_config())
  # The FPN width is shared (FieldReference) by every head's input.
  fpn = config.model.fpn.out_channels
  heads = config.model.roi_heads
  assert {config.model.rpn.in_channels, heads.box.in_channels, heads.mask.in_channels,
          heads.relation.in_channels, config.model.semantic.in_channels} == {fpn}


def test_every_original_config_has_its_file():
  expected = {"common", "tiny", "demo"} | set(FULL_CONFIGS) | set(FIXTURE_CONFIGS)
  assert expected <= set(ALL_CONFIGS)
  assert len(FULL_CONFIGS) == len(TABLE) == 12


@pytest.mark.parametrize("name", FULL_CONFIGS)
def test_full_config_matches_spec_table(name):
  config = _load(name)
  assert config.original_yaml == f"e2e_panoptic_rcnn_{TABLE[name][0]}.yaml"
  assert _mismatches(config, _expected_full(name)) == []
  assert config.input.canvas_sizes == ((800, 1344), (1344, 800), (1344, 1344))


@pytest.mark.parametrize("name", FULL_CONFIGS)
def test_full_config_docstring_gives_commands_and_reported_pq(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert f"--config configs/{name}.py" in doc
  assert "--mode eval" in doc and "python -m convert" in doc
  assert f"the original reports PQ {TABLE[name][-1]:.1f}" in doc


@pytest.mark.parametrize("name", sorted(FIXTURE_CONFIGS))
def test_fixture_config_matches_merged_yaml(name, fixture_yamls):
  yacs = fixture_yamls[name]
  config = _load(name)
  assert config.original_yaml == FIXTURE_CONFIGS[name]
  assert _mismatches(config, yacs) == []
  padded = [((s + 31) // 32) * 32 for s in (320, 475)]
  assert tuple(padded) in config.input.canvas_sizes


@pytest.mark.parametrize("name", sorted(FIXTURE_CONFIGS))
def test_fixture_yaml_has_what_the_implementation_assumes(name, fixture_yamls):
  yacs = fixture_yamls[name]
  assert {k: yacs[k] for k in FIXED_BY_IMPLEMENTATION} == FIXED_BY_IMPLEMENTATION
  assert set(YACS_TO_CONFIG) <= set(yacs)


def test_spec_base_equals_the_fixture_yaml(fixture_yamls):
  """BASE + the R-50 relation-finetune row + the small widths == rap_small's merged YAML."""
  expected = _expected_full("rap_r50")
  expected.update(SMALL_WIDTHS)
  yacs = fixture_yamls["fixtures.rap_small"]
  diff = {k: (v, yacs[k]) for k, v in expected.items() if _tuple(yacs[k]) != _tuple(v)}
  assert diff == {}


def test_x101_fixture_differs_from_r50_fixture_only_in_the_body(fixture_yamls):
  r50, x101 = fixture_yamls["fixtures.rap_small"], fixture_yamls["fixtures.rap_x101_small"]
  assert {k for k in r50 if r50[k] != x101[k]} == {
      "MODEL.BACKBONE.CONV_BODY", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.STRIDE_IN_1X1",
      "MODEL.RESNETS.WIDTH_PER_GROUP", "OUTPUT_DIR"}
  b = _load("fixtures.rap_x101_small").model.backbone
  assert (b.depth, b.num_groups, b.width_per_group, b.stride_in_1x1) == (101, 32, 1, False)
  assert common.BLOCKS[b.depth] == (3, 4, 23, 3)


def test_recipes_backbones_follow_spec():
  assert recipes.BACKBONES["X-152-32x8d-DCN"]["stage_with_dcn"] == (False, True, True, True)
  for name, b in recipes.BACKBONES.items():
    assert b["depth"] == int(re.match(r"[RX]-(\d+)", name).group(1))
    assert b["stride_in_1x1"] == name.startswith("R-")
  with pytest.raises(KeyError, match="R-34"):
    recipes.set_backbone(common.get_config(), "R-34")


def test_tiny_and_demo_run_on_the_synthetic_data():
  for name in ("tiny", "demo", "synthetic_rap"):
    config = _load(name)
    assert config.data.name == "synthetic"
    assert config.model.roi_heads.relation.kind == "rap" and config.fusion.method == "rap"
  oc = _load("synthetic_ocfusion")
  assert oc.model.roi_heads.relation.kind == "ocfusion" and oc.fusion.method == "ocfusion"
  assert _load("demo").modes == ("train",)  # train runs both stages, then evaluates


def test_synthetic_experiments_train_from_scratch_with_group_norm():
  # The from-scratch recipe (recipes.synthetic_from_scratch + two_stages): GroupNorm everywhere,
  # nothing frozen; stage 1 without relation head, stage 2 = the relation finetune continuing
  # the iteration count; the full experiments validate on a seed the training never used.
  for name in ("demo", "synthetic_rap", "synthetic_ocfusion"):
    config = _load(name)
    b = config.model.backbone
    assert (b.stem_func, b.trans_func, b.freeze_at) == ("StemWithGN", "BottleneckWithGN", 0)
    assert config.model.fpn.use_gn and config.model.roi_heads.box.use_gn
    assert config.model.roi_heads.mask.use_gn
    stage1, stage2 = train.stage_configs(config)
    assert stage1.model.roi_heads.relation.kind == "none"
    assert stage1.fusion.method == "heuristic"
    assert stage2.train.stage == 2 and stage2.train.start_iter == stage1.train.max_iter
    assert stage2.fusion.method == config.model.roi_heads.relation.kind
    assert stage1.train.warmup_iters > 0 and stage2.train.warmup_iters == 0
  for name in ("synthetic_rap", "synthetic_ocfusion"):
    s = _load(name).data.synthetic
    assert s.val_seed >= 0 and s.val_seed != s.seed


@pytest.mark.parametrize("path, value, message", [
    ("model.backbone.depth", 34, "model.backbone.depth=34: must be one of (50, 101, 152)"),
    ("model.backbone.stage_with_dcn", (False, True), "model.backbone.stage_with_dcn="),
    ("model.rpn.anchor_sizes", (32, 64), "one per FPN level P2..P6"),
    ("model.rpn.nms_thresh", 1.5, "model.rpn.nms_thresh=1.5: must be in [0, 1]"),
    ("model.roi_heads.box.num_classes", 91, "model.roi_heads.box.num_classes=91: must be 81"),
    ("model.roi_heads.box.max_detections", 10, "must be >= model.roi_heads.box.detections_per_img"),
    ("model.roi_heads.mask.resolution", 14, "must be 2 x pooler_resolution"),
    ("model.roi_heads.relation.kind", "depth", "model.roi_heads.relation.kind='depth'"),
    ("model.semantic.num_classes", 133, "model.semantic.num_classes=133: must be 54"),
    ("model.semantic.num_groups", 5, "must be divisible by model.semantic.num_groups"),
    ("input.size_divisibility", 16, "input.size_divisibility=16: must be a positive multiple"),
    ("input.canvas_sizes", ((128, 200), (192, 192)), "every canvas side must be a multiple"),
    ("input.canvas_sizes", ((128, 192),), "no canvas holds a padded test image of size (192, 128)"),
    ("input.min_size_test", 256, "input.min_size_test=256: must be <= input.max_size_test"),
    ("fusion.method", "RAP", "fusion.method='RAP': must be one of"),
    ("fusion.overlap_thr", -0.1, "fusion.overlap_thr=-0.1: must be in [0, 1]"),
    ("data.name", "cityscapes", "data.name='cityscapes': must be one of ('coco', 'synthetic')"),
    ("train.stage", 3, "train.stage=3: must be one of (1, 2)"),
    ("train.steps", (20, 10), "train.steps=(20, 10): must be strictly increasing"),
    ("train.start_iter", 20, "train.start_iter=20: must be < train.max_iter"),
    ("modes", ("train", "test"), "modes=('train', 'test'): must be a non-empty tuple"),
])
def test_check_config_names_the_bad_key(path, value, message):
  assert_config_error(_load("tiny"), path, value, message)


def assert_config_error(config, path: str, value, message: str) -> None:
  """Setting the dotted key `path` to `value` makes check_config fail with `message` in it."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check_config(config, ("train",))
  assert message in str(error.value)


def test_check_config_consistency_between_sub_dicts():
  config = _load("tiny")
  config.model.roi_heads.relation.kind = "none"
  config.train.stage = 2
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check_config(config)
  text = str(error.value)
  assert "fusion.method='rap': needs model.roi_heads.relation.kind='rap'" in text
  assert "train.stage=2 trains only the relation head" in text
  config.fusion.method = "heuristic"  # any head works with the heuristic fusion
  config.train.stage = 1
  config_checks.check_config(config)
