"""The full two-stage RAP experiment on the built-in synthetic data (about 60 minutes, 2 cores).

  python -m rap_jax.main --config configs/synthetic_rap.py --workdir runs/synthetic_rap

The model and data of configs/demo.py (`recipes.synthetic_from_scratch`) with the schedule the
demo has no time for: 1,500 training scenes, stage 1 = Panoptic FPN from scratch for 1,800
iterations of 8 images (LR 0.02, 50 warmup iterations, x0.1 at 1,350 and 1,656), stage 2 = the
RAP relation finetune for 200 iterations (only the fresh relation head trained). Evaluation runs
on 200 validation scenes drawn from seed 1 (`val_seed`), a stream the training split never used,
with the RAP and the heuristic fusion on the same detections: RAP's gain is
`panoptic.rap.things.pq - panoptic.heuristic.things.pq` in metrics.json, next to the relation
accuracy and its score-order baseline over the same pairs.

The comparison the original README makes is configs/synthetic_ocfusion.py (same stage 1).
"""
from configs import common, recipes


def get_config(kind: str = "rap"):
  config = common.get_config()
  config.original_yaml = ""
  config.original_weight = ""
  config.original_output_dir = ""
  config.modes = ("train",)
  recipes.synthetic_from_scratch(config, size=160, kind=kind)
  config.data.data_dir = "datasets/synthetic_1500"
  config.data.synthetic.update(num_train=1500, num_val=200, seed=0, val_seed=1)
  config.predict.images = "datasets/synthetic_1500/images/val2017"
  config.eval.batch_size = 8
  recipes.two_stages(config, stage1_iters=1800, stage2_iters=200, batch=8, base_lr=0.02)
  return config
