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
from configs import tiny


def get_config():
  config = tiny.get_config()
  b = config.model.backbone
  b.stem_func = "StemWithGN"
  b.trans_func = "BottleneckWithGN"
  b.freeze_at = 0
  config.model.group_norm.update(dim_per_gp=-1, num_groups=4, epsilon=1e-5)
  config.model.fpn.use_gn = True
  box = config.model.roi_heads.box
  box.extractor = "FPNXconv1fcFeatureExtractor"
  box.use_gn = True
  box.num_stacked_convs = 4
  box.conv_head_dim = 16
  config.model.roi_heads.mask.use_gn = True
  return config
