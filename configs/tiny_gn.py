"""configs/tiny.py with the original's GroupNorm options everywhere, for training from scratch.

`RESNETS.STEM_FUNC "StemWithGN"`, `TRANS_FUNC "BottleneckWithGN"` (nothing frozen:
`FREEZE_CONV_BODY_AT 0`), `FPN.USE_GN`, `ROI_BOX_HEAD.FEATURE_EXTRACTOR
"FPNXconv1fcFeatureExtractor"` with `USE_GN` (4 stacked 3x3 convs of 16 channels, then fc6 of 32),
`ROI_MASK_HEAD.USE_GN`; `MODEL.GROUP_NORM.NUM_GROUPS 4` (the tiny widths 4..128 are not multiples
of the default 32). Every GroupNorm layer starts at weight 1 / bias 0 and its conv with the
original's init (rap_jax/modeling/layers.py). Everything else, the schedule included, is tiny's.

Run:
  python -m rap_jax.main --config configs/tiny_gn.py --workdir runs/tiny_gn
Expected: finishes on 2 CPU cores; numbers are meaningless (the model is far too small).
Measured here (2 busy CPU cores): the first steps' loss is 10.5-10.9 (GroupNorm keeps the fresh
network's activations normalised; FrozenBN at identity makes tiny.py start in the hundreds);
checkpoints save and resume (train_metrics.jsonl, `--mode train` twice). tests/test_group_norm.py
runs its forward, losses and gradients.
"""
from configs import recipes, tiny


def get_config():
  config = tiny.get_config()
  # NUM_GROUPS 4: the tiny widths 4..128 are not all multiples of the default 32.
  recipes.group_norm_everywhere(config, num_groups=4)
  return config
