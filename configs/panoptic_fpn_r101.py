"""Panoptic FPN R-101, stage 1 (original `e2e_panoptic_rcnn_R_101_FPN_1x.yaml`).

Backbone: ResNet-101. Mask R-CNN + semantic FPN branch, heuristic fusion (CONFIDENCE/OVERLAP
0.5/0.5); SGD, global batch 16, LR 0.02 with 500 warmup iterations, decays at 80k and 120k, 150k
iterations, a checkpoint every 10k (SPEC §1.4, §6.1). The original starts from ImageNet weights
`catalog://ImageNetPretrained/MSRA/R-101`; `init_checkpoint` is those weights converted to an orbax
checkpoint.

Train on COCO (README "Training on COCO"; `init_checkpoint`: the converted start weights):
  python -m rap_jax.main --config configs/panoptic_fpn_r101.py \
    --workdir runs/panoptic_fpn_r101 --config.init_checkpoint=runs/r101_init_ckpt
Evaluate the original's released weights (README "Converting the original checkpoints"):
  python -m convert R_101.pth runs/panoptic_fpn_r101_ckpt \
    --config configs/panoptic_fpn_r101.py
  python -m rap_jax.main --config configs/panoptic_fpn_r101.py --mode eval \
    --config.init_checkpoint=runs/panoptic_fpn_r101_ckpt \
    --workdir runs/panoptic_fpn_r101_eval

Expected result, COCO val2017: the original reports PQ 41.4. Measured here: not measured yet.
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  recipes.set_backbone(config, "R-101")
  config.original_yaml = "e2e_panoptic_rcnn_R_101_FPN_1x.yaml"
  config.original_weight = "catalog://ImageNetPretrained/MSRA/R-101"
  config.original_output_dir = "output_coco_panoptic_R_101/"
  return config
