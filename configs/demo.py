"""The main job of README.md: a small RAP model trained from scratch on the built-in data.

`python -m rap_jax.main --config configs/demo.py --workdir runs/demo` generates the synthetic
dataset into `datasets/synthetic` (once), then trains both stages of the original in one workdir
(`train.stages`, rap_jax/train.py):
  stage 1  Panoptic FPN from scratch (no relation head, heuristic fusion), iterations 1..200;
  stage 2  the RAP relation finetune from stage 1's last checkpoint with a fresh relation head,
           only that head trained, iterations 201..240;
and evaluates the result on the validation images with the RAP and the heuristic fusion on the
same detections (runs/demo/metrics.json, metrics.txt, eval/); checkpoints in runs/demo/checkpoints,
losses in train_metrics.jsonl and curves.png, everything logged in log.txt.

Model and data (`recipes.synthetic_from_scratch`): the small fixture widths with the original's
GroupNorm options everywhere (what maskrcnn-benchmark trains from scratch with), 160x160
synthetic scenes in which a small object often stands in front of a larger one, so that score
order is often the wrong depth order. SGD at LR 0.02 for 8 images (twice the original's linear
scaling of 0.02 per 16: GroupNorm keeps it stable and it learns faster), 50 warmup iterations.

This schedule is sized to the README's 10 minutes on 2 CPU cores: the model learns (losses fall,
detections appear), but 200 iterations are far from converged; `configs/synthetic_rap.py` is the
full experiment.

Evaluate a trained workdir on a split of another seed:
  python -m rap_jax.main --config configs/demo.py --mode eval --workdir W2 \
    --config.init_checkpoint=runs/demo --config.data.data_dir=D2 --config.data.synthetic.seed=S
"""
from configs import common, recipes


def get_config():
  config = common.get_config()
  config.original_yaml = ""
  config.original_weight = ""
  config.original_output_dir = ""
  config.modes = ("train",)
  recipes.synthetic_from_scratch(config, size=160, kind="rap")
  config.data.data_dir = "datasets/synthetic"
  config.data.synthetic.update(num_train=600, num_val=64, seed=0)
  config.predict.images = "datasets/synthetic/images/val2017"
  config.eval.batch_size = 8
  recipes.two_stages(config, stage1_iters=200, stage2_iters=40, batch=8, base_lr=0.02)
  return config
