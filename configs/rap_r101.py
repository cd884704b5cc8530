"""RAP R-101 (original `e2e_panoptic_rcnn_R_101_FPN_1x_relation_finetune.yaml`).

Backbone: ResNet-101. Stage 2 on top of `panoptic_fpn_r101.py`: the RAP relation head (one
depth-order value per instance); only that head is trained, global batch 16, constant LR 0.002 for
iterations 150001..160000, a checkpoint every 5k (SPEC §1.4, §6.2). Fusion: RAP, CONFIDENCE_THR 0.6,
OVERLAP_THR 0.6, LARGE_OVERLAP_THR 0.5 (occluded pixels go to the instance with the lower relation
value).

Train on COCO from the stage-1 run's newest checkpoint (the new head is freshly initialised):
  python -m rap_jax.main --config configs/rap_r101.py --workdir runs/rap_r101 \
    --config.init_checkpoint=runs/panoptic_fpn_r101
Evaluate the original's released weights (README "Converting the original checkpoints"):
  python -m convert R_101_RAP.pth runs/rap_r101_ckpt --config configs/rap_r101.py
  python -m rap_jax.main --config configs/rap_r101.py --mode eval \
    --config.init_checkpoint=runs/rap_r101_ckpt --workdir runs/rap_r101_eval

Expected result, COCO val2017: the original reports PQ 43.3. Measured here: not measured yet.
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  recipes.set_backbone(config, "R-101")
  recipes.relation_finetune(config, "rap")
  config.original_yaml = "e2e_panoptic_rcnn_R_101_FPN_1x_relation_finetune.yaml"
  config.original_weight = "output_coco_panoptic_R_101/model_final.pth"
  config.original_output_dir = "output_coco_panoptic_R_101_relation_finetune/"
  return config
