"""Panoptic FPN X-101-32x8d, stage 1 (original `e2e_panoptic_rcnn_X_101_32x8d_FPN_1x.yaml`).

Backbone: ResNeXt-101 32x8d. Mask R-CNN + semantic FPN branch, heuristic fusion (CONFIDENCE/OVERLAP
0.5/0.5); SGD, global batch 16, LR 0.02 with 500 warmup iterations, decays at 80k and 120k, 150k
iterations, a checkpoint every 10k (SPEC §1.4, §6.1). The original starts from ImageNet weights
`catalog://ImageNetPretrained/FAIR/20171220/X-101-32x8d`; `init_checkpoint` is those weights
converted to an orbax checkpoint.

Train on COCO (README "Training on COCO"; `init_checkpoint`: the converted start weights):
  python -m rap_jax.main --config configs/panoptic_fpn_x101.py \
    --workdir runs/panoptic_fpn_x101 --config.init_checkpoint=runs/x101_init_ckpt
Evaluate the original's released weights (README "Converting the original checkpoints"):
  python -m convert X_101.pth runs/panoptic_fpn_x101_ckpt \
    --config configs/panoptic_fpn_x101.py
  python -m rap_jax.main --config configs/panoptic_fpn_x101.py --mode eval \
    --config.init_checkpoint=runs/panoptic_fpn_x101_ckpt \
    --workdir runs/panoptic_fpn_x101_eval

Expected result, COCO val2017: the original reports PQ 43.4. Measured here: not measured yet.
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  recipes.set_backbone(config, "X-101-32x8d")
  config.original_yaml = "e2e_panoptic_rcnn_X_101_32x8d_FPN_1x.yaml"
  config.original_weight = "catalog://ImageNetPretrained/FAIR/20171220/X-101-32x8d"
  config.original_output_dir = "output_coco_panoptic_X_101_32x8d/"
  return config
