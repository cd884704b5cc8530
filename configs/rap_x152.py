"""RAP X-152-32x8d (original `e2e_panoptic_rcnn_X_152_32x8d_FPN_1x_relation_finetune.yaml`).

Backbone: ResNeXt-152 32x8d. Stage 2 on top of `panoptic_fpn_x152.py`: the RAP relation head (one
depth-order value per instance); only that head is trained, global batch 12 (IMS_PER_BATCH 12 in the
X-152 finetunes), constant LR 0.002 for iterations 150001..160000, a checkpoint every 5k (SPEC §1.4,
§6.2). Fusion: RAP, CONFIDENCE_THR 0.6, OVERLAP_THR 0.6, LARGE_OVERLAP_THR 0.5 (occluded pixels go
to the instance with the lower relation value).

Train on COCO from the stage-1 run's newest checkpoint (the new head is freshly initialised):
  python -m rap_jax.main --config configs/rap_x152.py --workdir runs/rap_x152 \
    --config.init_checkpoint=runs/panoptic_fpn_x152
Evaluate the original's released weights (README "Converting the original checkpoints"):
  python -m convert X_152_RAP.pth runs/rap_x152_ckpt --config configs/rap_x152.py
  python -m rap_jax.main --config configs/rap_x152.py --mode eval \
    --config.init_checkpoint=runs/rap_x152_ckpt --workdir runs/rap_x152_eval

Expected result, COCO val2017: the original reports PQ 46.9. Measured here: not measured yet.
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  recipes.set_backbone(config, "X-152-32x8d")
  recipes.relation_finetune(config, "rap")
  config.train.global_batch_size = 12  # SOLVER.IMS_PER_BATCH 12
  config.original_yaml = "e2e_panoptic_rcnn_X_152_32x8d_FPN_1x_relation_finetune.yaml"
  config.original_weight = "output_coco_panoptic_X_152_32x8d/model_final.pth"
  config.original_output_dir = "output_coco_panoptic_X_152_32x8d_relation_finetune/"
  return config
