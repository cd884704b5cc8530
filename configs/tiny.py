"""A very small RAP model on the built-in synthetic data, for fast tests.

R-50 topology (blocks 3/4/6/3, FPN P2-P6, every head) at toy widths: stem 8, width per group 4
(stage outputs 16/32/64/128), FPN 16, box MLP 32, mask convs 16, relation conv 16 / MLP 32,
semantic 32 (GroupNorm 8); test size 128/192 on three canvases; 200/100 proposals, 24 detection
slots. RAP relation head and RAP fusion; a short stage-1 schedule (everything trained, the
relation head included) at base LR 2e-4: from scratch (no ImageNet weights) the relation
ranking loss overflows to inf within 10 steps at 5e-4 (measured).

Run:
  python -m rap_jax.main --config configs/tiny.py --workdir runs/tiny
  python -m rap_jax.main --config configs/tiny.py --workdir runs/tiny --mode predict \
    --config.predict.images="datasets/synthetic_tiny/images/val2017/*.png"
Expected: finishes on 2 CPU cores; numbers are meaningless (the model is far too small).
tests/test_train.py trains it 20 steps on 8 images of 64x96 (8 fake devices): loss 261 -> 8.
"""
from configs import common


def get_config():
  config = common.get_config()
  config.original_yaml = ""
  config.original_weight = ""
  config.original_output_dir = ""
  config.modes = ("train",)

  b = config.model.backbone
  b.stem_out_channels = 8
  b.width_per_group = 4
  b.res2_out_channels = 16
  config.model.fpn.out_channels = 16  # FieldReference: every head's in_channels follows
  rpn = config.model.rpn
  rpn.pre_nms_top_n_test = rpn.pre_nms_top_n_train = 200
  rpn.post_nms_top_n_test = rpn.post_nms_top_n_train = 100
  rpn.fpn_post_nms_top_n_test = rpn.fpn_post_nms_top_n_train = 100
  rpn.batch_size_per_image = 64
  box = config.model.roi_heads.box
  box.mlp_head_dim = 32
  box.detections_per_img = 20
  box.max_detections = 24
  box.batch_size_per_image = 64
  config.model.roi_heads.mask.conv_layers = (16, 16, 16, 16)
  rel = config.model.roi_heads.relation
  rel.kind = "rap"
  rel.conv_dim = 16
  rel.mlp_head_dim = 32
  rel.oc_conv_dim = 16
  rel.oc_mlp_head_dim = 32
  rel.oc_train_pairs = 16
  config.model.semantic.conv_dim = 32
  config.model.semantic.num_groups = 8

  config.input.min_size_test = 128
  config.input.max_size_test = 192
  config.input.min_size_train = (128,)
  config.input.max_size_train = 192
  config.input.canvas_sizes = ((128, 192), (192, 128), (192, 192))

  config.fusion.method = "rap"
  config.fusion.confidence_thr = 0.5
  config.fusion.overlap_thr = 0.5
  config.fusion.stuff_area_limit = 256  # the synthetic images are small

  config.data.name = "synthetic"
  config.data.data_dir = "datasets/synthetic_tiny"
  config.data.max_instances = 16
  config.data.shuffle_buffer = 16
  config.data.synthetic.update(num_train=16, num_val=4, image_size=160, seed=0)
  config.eval.batch_size = 4

  t = config.train
  t.global_batch_size = 8
  t.base_lr = 0.0002
  t.steps = (15,)
  t.max_iter = 20
  t.warmup_iters = 5
  t.checkpoint_period = 10
  t.log_every = 5
  return config
