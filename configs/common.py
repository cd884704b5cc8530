"""Shared defaults of every rap_jax config: the original's yacs defaults + the 12 YAMLs' common keys.

Each sub-dict feeds exactly one module or one stage of the program (STYLE.md "Configs"):

  config.model.backbone        -> rap_jax.modeling.resnet.ResNet
  config.model.group_norm      -> the GroupNorm of every USE_GN / *WithGN option (MODEL.GROUP_NORM;
                                  PanopticRCNN.from_config hands it to the modules that use it)
  config.model.fpn             -> rap_jax.modeling.fpn.FPN
  config.model.rpn             -> rap_jax.modeling.rpn.RPN
  config.model.roi_heads.box   -> rap_jax.modeling.box_head.BoxHead
  config.model.roi_heads.mask  -> rap_jax.modeling.mask_head.MaskHead
  config.model.roi_heads.relation -> RelationHead (kind 'rap') / OcclusionHead (kind 'ocfusion')
  config.model.semantic        -> rap_jax.modeling.semantic_head.SemanticFPN
  config.input                 -> pre-processing (rap_jax.data.transforms) and canvas sizes
  config.postprocess           -> mask pasting and semantic resize (rap_jax.ops.masks / resize)
  config.fusion                -> rap_jax.ops.fusion
  config.data / predict / eval / train -> the program modes

Values are those of maskrcnn-benchmark's defaults merged with RAP's YAMLs (SPEC §1). Per-config
files (``configs/rap_r50.py`` ...) start from ``get_config()`` here and change what their YAML
changes.
"""
from __future__ import annotations

import ml_collections

# ResNet stage block counts per CONV_BODY (SPEC §2.2).
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# Stage-2 (relation finetune) is selected by model.roi_heads.relation.kind: 'none' | 'rap' | 'ocfusion'.
RELATION_KINDS = ("none", "rap", "ocfusion")
FUSION_METHODS = ("heuristic", "rap", "ocfusion")
# RESNETS.STEM_FUNC / TRANS_FUNC and ROI_BOX_HEAD.FEATURE_EXTRACTOR values rap_jax builds.
STEM_FUNCS = ("StemWithFixedBatchNorm", "StemWithGN")
TRANS_FUNCS = ("BottleneckWithFixedBatchNorm", "BottleneckWithGN")
BOX_EXTRACTORS = ("FPN2MLPFeatureExtractor", "FPNXconv1fcFeatureExtractor")


def get_config() -> ml_collections.ConfigDict:
  """R-50-FPN Panoptic FPN (stage 1) with every default of the original."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A converted (python -m convert) or trained orbax checkpoint directory to start from.
  config.init_checkpoint = ""
  # The original YAML this config reproduces, the weights it started from (MODEL.WEIGHT) and its
  # OUTPUT_DIR: documentation, and what the config tests compare against.
  config.original_yaml = "e2e_panoptic_rcnn_R_50_FPN_1x.yaml"
  config.original_weight = "catalog://ImageNetPretrained/MSRA/R-50"
  config.original_output_dir = "output_coco_panoptic_R_50/"
  # Modes run in this order when `--mode` is not given on the command line.
  config.modes = ("train",)

  # ---------------------------------------------------------------- model
  config.model = ml_collections.ConfigDict()
  # NMS comparison: 'cuda' suppresses on IoU > thr (the original's reference device), 'cpu' on
  # IoU >= thr (its CPU kernel, which the fixtures were made with) (SPEC §2.10, §11.13).
  config.model.nms_compare = "cuda"
  # Matmul/conv precision on accelerators ('highest' = true float32, needed to reproduce the
  # original; 'default' lets GPUs use TF32 / TPUs bf16 passes for speed).
  config.model.matmul_precision = "highest"
  fpn_channels = ml_collections.FieldReference(256)

  config.model.backbone = dict(
      depth=50,                      # 50 | 101 | 152 (block counts in BLOCKS)
      num_groups=1,                  # RESNETS.NUM_GROUPS
      width_per_group=64,            # RESNETS.WIDTH_PER_GROUP
      stride_in_1x1=True,            # RESNETS.STRIDE_IN_1X1 (MSRA); False for ResNeXt
      stem_out_channels=64,          # RESNETS.STEM_OUT_CHANNELS
      res2_out_channels=256,         # RESNETS.RES2_OUT_CHANNELS
      stage_with_dcn=(False, False, False, False),
      deformable_groups=1,
      freeze_at=2,                   # BACKBONE.FREEZE_CONV_BODY_AT (training only)
      # RESNETS.STEM_FUNC / TRANS_FUNC: 'StemWithFixedBatchNorm' | 'StemWithGN',
      # 'BottleneckWithFixedBatchNorm' | 'BottleneckWithGN' (GroupNorm of model.group_norm).
      stem_func="StemWithFixedBatchNorm",
      trans_func="BottleneckWithFixedBatchNorm",
  )
  # MODEL.GROUP_NORM: exactly one of dim_per_gp (channels per group) and num_groups is -1.
  # Not the semantic head's GroupNorm (hard-coded 32 groups there: model.semantic.num_groups).
  config.model.group_norm = dict(dim_per_gp=-1, num_groups=32, epsilon=1e-5)
  config.model.fpn = dict(
      out_channels=fpn_channels,
      use_gn=False,                  # FPN.USE_GN: conv (no bias) + GroupNorm in every FPN conv
  )
  config.model.rpn = dict(
      in_channels=fpn_channels,
      anchor_sizes=(32, 64, 128, 256, 512),
      anchor_strides=(4, 8, 16, 32, 64),
      aspect_ratios=(0.5, 1.0, 2.0),
      straddle_thresh=0,
      nms_thresh=0.7,
      min_size=0,
      pre_nms_top_n_test=1000,
      post_nms_top_n_test=1000,
      fpn_post_nms_top_n_test=1000,
      pre_nms_top_n_train=1000,     # the YAMLs override the default 2000
      post_nms_top_n_train=2000,
      fpn_post_nms_top_n_train=2000,
      fg_iou_threshold=0.7,
      bg_iou_threshold=0.3,
      batch_size_per_image=256,
      positive_fraction=0.5,
  )
  config.model.roi_heads = ml_collections.ConfigDict()
  config.model.roi_heads.box = dict(
      in_channels=fpn_channels,
      pooler_resolution=7,
      pooler_scales=(0.25, 0.125, 0.0625, 0.03125),
      pooler_sampling_ratio=2,
      mlp_head_dim=1024,
      # ROI_BOX_HEAD.FEATURE_EXTRACTOR: 'FPN2MLPFeatureExtractor' (fc6, fc7) |
      # 'FPNXconv1fcFeatureExtractor' (num_stacked_convs 3x3 convs of conv_head_dim, then fc6).
      extractor="FPN2MLPFeatureExtractor",
      use_gn=False,                 # ROI_BOX_HEAD.USE_GN (xconvs, or fc6/fc7 of FPN2MLP)
      num_stacked_convs=4,          # ROI_BOX_HEAD.NUM_STACKED_CONVS
      conv_head_dim=256,            # ROI_BOX_HEAD.CONV_HEAD_DIM
      num_classes=81,
      bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
      score_thresh=0.05,
      nms_thresh=0.5,
      detections_per_img=100,
      # Static number of detection slots: >= detections_per_img so that the original's
      # "keep ties of the 100th score" rule (SPEC §2.6 step 5) never loses a detection.
      max_detections=104,
      # Class-wise NMS runs as one class-aware NMS over the top candidates when an image has no
      # more than this many (score > score_thresh); otherwise per class over all proposals.
      # Same detections either way; only speed differs.
      max_nms_candidates=2048,
      fg_iou_threshold=0.5,
      bg_iou_threshold=0.5,
      batch_size_per_image=512,
      positive_fraction=0.25,
  )
  config.model.roi_heads.mask = dict(
      in_channels=fpn_channels,
      pooler_resolution=14,
      pooler_scales=(0.25, 0.125, 0.0625, 0.03125),
      pooler_sampling_ratio=2,
      conv_layers=(256, 256, 256, 256),
      resolution=28,
      num_classes=81,
      use_gn=False,                 # ROI_MASK_HEAD.USE_GN: mask_fcnK = conv (no bias) + GroupNorm
  )
  config.model.roi_heads.relation = dict(
      kind="none",                  # 'none' (stage 1) | 'rap' | 'ocfusion' (SPEC §2.9, §2.11)
      in_channels=fpn_channels,     # + 1 mask channel inside the head
      conv_dim=256,
      mlp_head_dim=1024,
      oc_conv_dim=512,
      oc_mlp_head_dim=1024,
      loss_weight=1.0,              # MODEL.RELATION_LOSS_WEIGHT
      oc_pair_chunk=50,             # OCFusion inference chunking (numerics only)
      oc_train_pairs=128,
      # The ranking loss log(1 + exp(z_front - z_back)) is computed literally as the original
      # (it overflows above a difference of ~88.7); True uses a stable softplus instead.
      stable_ranking_loss=False,
  )
  config.model.semantic = dict(
      in_channels=fpn_channels,
      num_classes=54,               # SEMANTIC.NUM_CLASSES; 55 output channels
      conv_dim=128,
      num_groups=32,
      loss_weight=0.5,
  )

  # ---------------------------------------------------------------- input / pre-processing
  config.input = dict(
      min_size_test=800,
      max_size_test=1333,
      min_size_train=(800,),
      max_size_train=1333,
      pixel_mean=(102.9801, 115.9465, 122.7717),  # BGR, 0..255
      pixel_std=(1.0, 1.0, 1.0),
      size_divisibility=32,
      # Static network canvases (H, W): every image is padded into the smallest one that holds
      # its padded size. Results never depend on the canvas (SPEC §4.1 is reproduced through
      # per-image valid extents), only compile time and speed do.
      canvas_sizes=((800, 1344), (1344, 800), (1344, 1344)),
      flip_prob=0.5,
      # Training semantic labels: 'bilinear' reproduces the original's accidental cv2 bilinear
      # resize of label maps (SPEC §11.15); 'nearest' is the fix.
      semantic_label_resize="bilinear",
      train_image_resize="tf",      # 'tf' (fast) | 'pil' (the original's PIL bilinear)
      eval_image_resize="pil",      # eval reproduces the original's test transform exactly
  )

  # ---------------------------------------------------------------- post-processing
  config.postprocess = dict(
      mask_threshold=0.5,
      mask_padding=1,
      # False reproduces the original: the PADDED semantic logits are resized to the original
      # image size, squeezing the padding into the picture (SPEC §4.1 step 4, §11.3).
      # True crops the logits to the resized image before resizing (the fix).
      semantic_crop_padding=False,
      # Output canvases are the original size rounded up to this multiple (compile buckets).
      output_size_multiple=128,
  )

  # ---------------------------------------------------------------- fusion
  config.fusion = dict(
      method="heuristic",           # 'heuristic' | 'rap' | 'ocfusion' (SEMANTIC.COMBINE_METHOD)
      confidence_thr=0.5,
      overlap_thr=0.5,
      large_overlap_thr=0.5,
      stuff_area_limit=4096,
      oc_pair_overlap_thr=0.2,      # hard-coded in the original (SPEC §5.3)
  )

  # ---------------------------------------------------------------- modes
  config.data = dict(
      name="coco",                  # 'coco' (COCO 2017 layout on disk) | 'synthetic'
      data_dir="datasets/coco",
      train_split="train2017",
      eval_split="val2017",
      tfds_dir="",                  # prepared TFRecords; '' = <data_dir>/tfds
      # Training masks in the batch: 'packed' (bits, 8x smaller), 'canvas' (uint8) or 'none'.
      mask_format="packed",
      max_instances=100,            # static GT instance slots per image
      shuffle_buffer=1000,
      # The built-in dataset (data.name 'synthetic'), generated into data_dir when absent.
      # inset_prob: share of instances placed in front of a larger one (rap_jax/data/synthetic.py);
      # val_seed: the validation split's seed (-1: seed).
      synthetic=dict(num_train=64, num_val=16, image_size=256, seed=0, inset_prob=0.0,
                     val_seed=-1),
  )
  config.predict = dict(
      images="",                    # file, folder or glob pattern
      batch_size=1,
      write_vis=True,
  )
  config.eval = dict(
      batch_size=8,
      max_images=-1,                # -1: all
  )
  config.train = dict(
      stage=1,                      # 1: Panoptic FPN, 2: relation finetune (SOLVER.FINETUNE)
      global_batch_size=16,         # SOLVER.IMS_PER_BATCH
      base_lr=0.02,
      bias_lr_factor=2.0,
      momentum=0.9,
      weight_decay=1e-4,
      weight_decay_bias=0.0,
      gamma=0.1,
      steps=(80000, 120000),
      max_iter=150000,
      start_iter=0,                 # finetunes continue from 150000 (SPEC §6.2)
      warmup_factor=1.0 / 3,
      warmup_iters=500,
      checkpoint_period=10000,
      log_every=20,
      # 'per_device' (the original: each GPU normalises its losses by its own sampled anchors /
      # ROIs / pixels / pairs, DDP averages the gradients over GPUs) | 'global' (one
      # normalisation over the whole global batch). Same result on one device.
      loss_normalization="per_device",
      # Multi-stage runs in one job (configs/demo.py): a tuple of dicts of dotted overrides, one
      # per stage, each starting from the previous stage's last checkpoint (rap_jax/train.py).
      # Empty: one stage, as every original config.
      stages=(),
  )
  return config
