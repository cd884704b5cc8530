"""Panoptic FPN X-152-32x8d, stage 1 (original `e2e_panoptic_rcnn_X_152_32x8d_FPN_1x.yaml`).

Backbone: ResNeXt-152 32x8d. Mask R-CNN + semantic FPN branch, heuristic fusion (CONFIDENCE/OVERLAP
0.5/0.5); SGD, global batch 16, LR 0.02 with 500 warmup iterations, decays at 80k and 120k, 150k
iterations, a checkpoint every 10k (SPEC §1.4, §6.1). Like the original, stage 1 starts from a
COCO-trained Detectron Mask R-CNN (IN-5k pretrain)
`catalog://Caffe2Detectron/COCO/37129812/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x`, not from
ImageNet weights; `init_checkpoint` is those weights converted.

Train on COCO (README "Training on COCO"; `init_checkpoint`: the converted start weights):
  python -m rap_jax.main --config configs/panoptic_fpn_x152.py \
    --workdir runs/panoptic_fpn_x152 --config.init_checkpoint=runs/x152_init_ckpt
Evaluate the original's released weights (README "Converting the original checkpoints"):
  python -m convert X_152.pth runs/panoptic_fpn_x152_ckpt \
    --config configs/panoptic_fpn_x152.py
  python -m rap_jax.main --config configs/panoptic_fpn_x152.py --mode eval \
    --config.init_checkpoint=runs/panoptic_fpn_x152_ckpt \
    --workdir runs/panoptic_fpn_x152_eval

Expected result, COCO val2017: the original reports PQ 44.6. Measured here: not measured yet.
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  recipes.set_backbone(config, "X-152-32x8d")
  config.original_yaml = "e2e_panoptic_rcnn_X_152_32x8d_FPN_1x.yaml"
  config.original_weight = (
      "catalog://Caffe2Detectron/COCO/37129812/"
      "e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x")
  config.original_output_dir = "output_coco_panoptic_X_152_32x8d/"
  return config
