"""tf.data input pipelines (train and eval) over the `CocoPanopticRap` tfds dataset.

Static shapes: every batch has one of the configured canvases (`config.input.canvas_sizes`,
padded sizes rounded up to `size_divisibility` fit in it) and `max_instances` instance slots.
The per-canvas batching is the original's aspect-ratio grouping (SPEC §6.1: h/w < 1 vs >= 1
land in the landscape/portrait canvases). Every host draws the canvas of step k from the same
seeded sequence, so multi-host global batches always agree in shape.

Train batch (B = per-host batch, M = max_instances, (Hc, Wc) = the batch's canvas):

  image          float32 [B, Hc, Wc, 3]  BGR 0..255 minus pixel_mean (/ std), zero padded
  semantic       uint8   [B, Hc, Wc]     pfpn label at the resized size (0 = ignore), zero padded
  boxes          float32 [B, M, 4]       xyxy pixels of the resized (flipped) image, "+1"
                                         convention, zeros in padded slots
  labels         int32   [B, M]          contiguous thing ids 1..80 (0 in padded slots)
  instance_ids   int32   [B, M]          COCO annotation ids (0 in padded slots)
  instance_valid bool    [B, M]
  relations      bool    [B, M, M]       rel[i, j]: instance i is in front of instance j
  masks          uint8   [B, M, Hc, Wc]  0/1 amodal bitmaps at the resized size (mask_format
                                         'canvas'); [B, M, Hc, Wc // 8] bit-packed ('packed',
                                         `jnp.unpackbits(masks, axis=-1)`); absent for 'none'
  image_info     dict of [B, ...]: original_hw, resized_hw, padded_hw, canvas_hw int32 [B, 2];
                 image_id int32 [B]; flipped bool [B]; is_padding bool [B] (False in training)

Eval batch: `image` and `image_info` only (PQ reads the ground truth from disk), in a fixed order
(canvas by canvas, ascending image id inside a canvas), the last batch of each canvas padded with
`is_padding` examples (image_id -1, zero image), identical step count and canvases on every host.

Training data follows SPEC §6.1: crowd objects dropped, images with no non-crowd object left
after empty-box removal skipped (the original's remove_images_without_annotations; images whose
only objects are crowd crash the original, SPEC §11.19, and are skipped here), one min size drawn
per image from `min_size_train`, flip with `flip_prob`. Images with more than M non-crowd objects
keep the first M (annotation order). Randomness (min size, flip) is stateless, keyed by
(seed, position in the shuffled stream): the pipeline is deterministic for a seed.

Resizing (documented differences with the original):
* image: antialiased bilinear in TF (`image_resize='tf'`, default for training; within 1 grey
  level of the original's PIL resize) or PIL itself (`'pil'`, bit-exact, default for eval);
* masks: nearest neighbour (the original rasterises scaled polygons per proposal instead);
* semantic label: the original's accidental cv2 bilinear (default) or nearest (the fix).

Memory: 'canvas' masks are M * Hc * Wc bytes per image (100 x 800 x 1344 = 108 MB at the COCO
defaults) and their zero padding dominates the cost: `scripts/bench_input.py` (480x640 synthetic
images, batch 8, 2 shared cores) measured 0.10 CPU-s/image with 'canvas', 0.05 with 'packed'
(8x fewer bytes), 0.027 without masks. Prefer 'packed' (or a smaller max_instances) for COCO.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import weakref
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rap_jax.data import targets
from rap_jax.data import transforms

try:  # TensorFlow must never take the GPUs from JAX.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  pass

MASK_FORMATS = ("canvas", "packed", "none")
_INFO_HW_KEYS = ("original_hw", "resized_hw", "padded_hw", "canvas_hw")


# ------------------------------------------------------------------ host-side planning


def sort_canvases(canvases: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
  """Canvases in preference order: smallest area first (ties by shape), like `choose_canvas`."""
  return tuple(sorted({(int(c[0]), int(c[1])) for c in canvases}, key=lambda c: (c[0] * c[1], c)))


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous example range [start, stop) of one host; the ranges partition all examples."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  bounds = np.linspace(0, num_examples, process_count + 1).round().astype(int)
  return int(bounds[process_index]), int(bounds[process_index + 1])


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def split_metadata(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """Per-example image_id, height, width, num_instances of a prepared split (example order)."""
  meta = builder.info.metadata
  if meta is None or split not in meta:
    raise ValueError(f"split {split!r} is not prepared in {builder.data_dir} "
                     f"(prepared: {list(builder.info.splits.keys())})")
  return {k: np.asarray(v, np.int64) for k, v in meta[split].items()}


def _canvas_of(height: int, width: int, min_size: int, max_size: int, divisibility: int,
               canvases: Sequence[tuple[int, int]]) -> int:
  oh, ow = transforms.get_size(width, height, min_size, max_size)
  padded = transforms.padded_size(oh, ow, divisibility)
  for i, c in enumerate(canvases):
    if c[0] >= padded[0] and c[1] >= padded[1]:
      return i
  raise ValueError(f"no canvas in input.canvas_sizes={list(canvases)} holds a padded image of "
                   f"size {padded} (image {(height, width)}, min size {min_size}); add one")


def plan_train_canvases(meta: dict[str, np.ndarray], input_config, process_count: int
                        ) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
  """Canvases used in training and the probability that a step uses each.

  Each (image, min size) draw lands in the smallest canvas that holds it. If some host's shard has
  no image for a canvas that others need, that host could never produce such a batch: then every
  image goes to the one smallest canvas that holds them all (a warning is logged).

  Returns:
    canvases: [C] (h, w) in preference order (only those that receive images);
    probs: [C] float64, fraction of (image, min size) draws landing in each canvas.
  """
  canvases = sort_canvases(input_config.canvas_sizes)
  min_sizes = tuple(int(s) for s in np.atleast_1d(input_config.min_size_train))
  keep = meta["num_instances"] > 0
  if not keep.any():
    raise ValueError("no training image has a non-crowd instance")
  n = len(meta["image_id"])
  stops = [host_range(n, p, process_count)[1] for p in range(process_count)]
  host_of = np.searchsorted(stops, np.flatnonzero(keep), side="right")
  counts = np.zeros((process_count, len(canvases)), np.int64)
  for h, w, p in zip(meta["height"][keep], meta["width"][keep], host_of):
    for s in min_sizes:
      counts[p, _canvas_of(int(h), int(w), s, input_config.max_size_train,
                           input_config.size_divisibility, canvases)] += 1
  if counts.sum(1).min() == 0:
    raise ValueError(f"a host has no training image (process_count={process_count})")
  used = counts.sum(0) > 0
  if (counts[:, used] > 0).all():
    return tuple(c for c, u in zip(canvases, used) if u), counts.sum(0)[used] / counts.sum()
  largest = max(np.flatnonzero(used))  # canvases are sorted: the last used one holds every draw
  fits_all = [c for c in canvases[largest:]
              if all(c[0] >= d[0] and c[1] >= d[1] for d, u in zip(canvases, used) if u)]
  if not fits_all:
    raise ValueError(f"some of the {process_count} hosts have no training image for a canvas "
                     f"that others need, and no canvas of {canvases} holds every image")
  logging.warning("some of the %d hosts have no training image for a canvas others need: "
                  "training with the single canvas %s", process_count, fits_all[0])
  return (fits_all[0],), np.ones(1)


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """What one host's eval dataset yields.

  Attributes:
    num_steps: batches per host (the same on every host).
    batch_size: per-host batch.
    canvas_steps: ((canvas_hw, steps), ...) in output order (the same on every host).
    image_ids: this host's real image ids in output order (padding excluded).
    num_images: images evaluated over all hosts.
  """
  num_steps: int
  batch_size: int
  canvas_steps: tuple[tuple[tuple[int, int], int], ...]
  image_ids: np.ndarray
  num_images: int


def plan_eval(meta: dict[str, np.ndarray], input_config, batch_size: int, process_index: int,
              process_count: int, max_images: int = -1) -> tuple[EvalPlan, np.ndarray, range]:
  """Host slice, canvas of every image, per-canvas step counts (max over hosts)."""
  n = len(meta["image_id"]) if max_images < 0 else min(max_images, len(meta["image_id"]))
  canvases = sort_canvases(input_config.canvas_sizes)
  canvas_idx = np.array([
      _canvas_of(int(h), int(w), input_config.min_size_test, input_config.max_size_test,
                 input_config.size_divisibility, canvases)
      for h, w in zip(meta["height"][:n], meta["width"][:n])], np.int64)
  per_host = [canvas_idx[slice(*host_range(n, p, process_count))] for p in range(process_count)]
  steps = [max(-(-int((c == i).sum()) // batch_size) for c in per_host)
           for i in range(len(canvases))]
  start, stop = host_range(n, process_index, process_count)
  ids = meta["image_id"][start:stop]
  mine = per_host[process_index]
  order = np.concatenate([ids[mine == i] for i in range(len(canvases))]) if n else ids
  plan = EvalPlan(num_steps=int(sum(steps)), batch_size=batch_size,
                  canvas_steps=tuple((canvases[i], s) for i, s in enumerate(steps) if s),
                  image_ids=order, num_images=n)
  return plan, canvas_idx[start:stop], range(start, stop)


# ------------------------------------------------------------------ per-example TF functions


_SKIP = tfds.decode.SkipDecoding()
_DECODERS = {"image": _SKIP, "semantic": _SKIP, "objects": {"mask": _SKIP}}


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # every random op is explicitly seeded
  return options


def _decode_image(ex: dict, resized_hw: tf.Tensor, backend: str) -> tf.Tensor:
  """Encoded image -> [h', w', 3] uint8 resized."""
  if backend == "pil":
    return targets.decode_resize_image_pil(ex["image"], resized_hw)
  if backend == "tf":
    return targets.resize_image_tf(targets.decode_rgb(ex["image"]), resized_hw)
  raise ValueError(f"image_resize must be one of {targets.IMAGE_RESIZE_BACKENDS}, got {backend!r}")


def _image_info(original_hw, resized_hw, divisibility, canvas, image_id, flipped, is_padding):
  return dict(
      original_hw=tf.cast(original_hw, tf.int32),
      resized_hw=tf.cast(resized_hw, tf.int32),
      padded_hw=targets.padded_size_tf(tf.cast(resized_hw, tf.int32), divisibility),
      canvas_hw=tf.constant(canvas, tf.int32),
      image_id=tf.cast(image_id, tf.int32),
      flipped=tf.cast(flipped, tf.bool),
      is_padding=tf.cast(is_padding, tf.bool),
  )


def _train_example(ex: dict, *, canvas: tuple[int, int], input_config, max_instances: int,
                   semantic_resize: str, mask_format: str, image_resize: str,
                   require_semantic: bool) -> dict:
  """One encoded tfds example (+ `_resized_hw`, `_flip`) -> padded training targets."""
  hc, wc = canvas
  m = max_instances
  original_hw = tf.stack([tf.cast(ex["height"], tf.int32), tf.cast(ex["width"], tf.int32)])
  resized_hw, flip = ex["_resized_hw"], ex["_flip"]
  if require_semantic:
    tf.debugging.assert_equal(ex["has_semantic"], True, message=(
        "training needs semantic labels: annotations/semantic_<split>/ was missing when the "
        "dataset was prepared"))

  def maybe_flip(x, axis):
    return tf.cond(flip, lambda: tf.reverse(x, [axis]), lambda: x)

  # image: resize, flip, normalise, pad  [Hc, Wc, 3]
  rgb = maybe_flip(_decode_image(ex, resized_hw, image_resize), 1)
  image = targets.normalize_image_tf(rgb, input_config.pixel_mean, input_config.pixel_std)
  out = dict(image=targets.pad_to(image, [hc, wc, 3]))

  # semantic label: decode, resize (quirk), flip, pad  [Hc, Wc]
  label = tf.io.decode_png(ex["semantic"], channels=1)[..., 0]
  label = maybe_flip(targets.resize_semantic(label, resized_hw, semantic_resize), 1)
  out["semantic"] = targets.pad_to(label, [hc, wc])

  # instances: non-crowd, first M, in annotation order
  objs = ex["objects"]
  sel = tf.logical_not(objs["is_crowd"])
  boxes = tf.boolean_mask(objs["bbox"], sel)[:m]  # [n, 4]
  n = tf.shape(boxes)[0]
  boxes = targets.resize_boxes(boxes, original_hw, resized_hw)
  boxes = tf.cond(flip, lambda: targets.flip_boxes(boxes, resized_hw[1]), lambda: boxes)
  ids = tf.boolean_mask(objs["instance_id"], sel)[:m]  # int64 [n]
  valid = tf.range(m) < n
  ids_padded = targets.pad_to(ids, [m])
  out.update(
      boxes=targets.pad_to(boxes, [m, 4]),
      labels=targets.pad_to(tf.cast(tf.boolean_mask(objs["label"], sel)[:m], tf.int32), [m]),
      instance_ids=tf.cast(ids_padded, tf.int32),
      instance_valid=valid,
      relations=targets.relation_matrix(ids_padded, valid, ex["relations"]),
  )
  if mask_format != "none":
    masks = targets.decode_masks(tf.boolean_mask(objs["mask"], sel)[:m], original_hw)
    masks = targets.resize_masks(masks, resized_hw, flip)  # [n, h', w']
    mask_wc = wc
    if mask_format == "packed":  # pack the n real masks, then pad the instance axis
      masks = targets.pack_mask_bits(targets.pad_to(masks, [None, hc, wc]))  # [n, Hc, Wc / 8]
      mask_wc = wc // 8
    out["masks"] = targets.pad_to(masks, [m, hc, mask_wc])  # [M, Hc, Wc (/ 8)]
  out["image_info"] = _image_info(original_hw, resized_hw, input_config.size_divisibility,
                                  canvas, ex["image_id"], flip, False)
  return out


def _eval_example(ex: dict, *, canvas: tuple[int, int], input_config, image_resize: str) -> dict:
  hc, wc = canvas
  original_hw = tf.stack([tf.cast(ex["height"], tf.int32), tf.cast(ex["width"], tf.int32)])
  oh, ow = targets.get_size_tf(original_hw[0], original_hw[1], input_config.min_size_test,
                               input_config.max_size_test)
  resized_hw = tf.stack([oh, ow])
  rgb = _decode_image(ex, resized_hw, image_resize)
  image = targets.normalize_image_tf(rgb, input_config.pixel_mean, input_config.pixel_std)
  return dict(image=targets.pad_to(image, [hc, wc, 3]),
              image_info=_image_info(original_hw, resized_hw, input_config.size_divisibility,
                                     canvas, ex["image_id"], False, False))


def _eval_padding(canvas: tuple[int, int]) -> dict:
  zeros2 = tf.zeros([2], tf.int32)
  info = {k: zeros2 for k in _INFO_HW_KEYS}
  info.update(canvas_hw=tf.constant(canvas, tf.int32), image_id=tf.constant(-1, tf.int32),
              flipped=tf.constant(False), is_padding=tf.constant(True))
  return dict(image=tf.zeros([canvas[0], canvas[1], 3], tf.float32), image_info=info)


# ------------------------------------------------------------------ datasets


def make_train_dataset(builder: tfds.core.DatasetBuilder, *, split: str, input_config,
                       batch_size: int, max_instances: int, seed: int, shuffle_buffer: int = 1000,
                       process_index: int | None = None, process_count: int | None = None,
                       flip_prob: float | None = None, semantic_resize: str = "bilinear",
                       mask_format: str = "canvas", image_resize: str = "tf",
                       require_semantic: bool = True, num_epochs: int | None = None,
                       num_parallel_calls: int = tf.data.AUTOTUNE,
                       prefetch: int = 2) -> tf.data.Dataset:
  """Training batches of this host (keys in the module docstring), deterministic for `seed`.

  Args:
    builder: a prepared `CocoPanopticRap`.
    split: e.g. 'train2017'.
    input_config: `config.input` (min_size_train, max_size_train, pixel mean/std,
      size_divisibility, canvas_sizes, flip_prob).
    batch_size: per-host batch (global batch / process_count); drop_remainder.
    max_instances: instance slots M per image.
    seed: shuffling, min-size choice and flips.
    shuffle_buffer: examples (still encoded) in the shuffle buffer of each canvas stream.
    process_index, process_count: this host's shard (default: jax.process_index/count()).
    flip_prob: default `input_config.flip_prob`; 0 disables the flip.
    semantic_resize: 'bilinear' (the original's quirk, SPEC §11.15) or 'nearest'.
    mask_format: 'canvas', 'packed' or 'none'.
    image_resize: 'tf' (fast, +-1 grey level) or 'pil' (exact).
    require_semantic: fail on examples prepared without semantic labels.
    num_epochs: None repeats forever (training by iterations). A finite count stops at the first
      step whose canvas stream is exhausted (single host use: tests, debugging).
    num_parallel_calls, prefetch: tf.data parallelism and prefetched batches.
  """
  process_index, process_count = _process(process_index, process_count)
  if mask_format not in MASK_FORMATS:
    raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
  if semantic_resize not in targets.SEMANTIC_RESIZE_METHODS:
    raise ValueError(f"semantic_resize must be one of {targets.SEMANTIC_RESIZE_METHODS}")
  flip_prob = float(input_config.flip_prob if flip_prob is None else flip_prob)
  meta = split_metadata(builder, split)
  canvases, probs = plan_train_canvases(meta, input_config, process_count)
  start, stop = host_range(len(meta["image_id"]), process_index, process_count)
  min_sizes = tf.constant(np.atleast_1d(input_config.min_size_train).astype(np.int32))
  seed = int(seed)

  def base() -> tf.data.Dataset:
    ds = builder.as_dataset(
        split=tfds.core.ReadInstruction(split, from_=start, to=stop, unit="abs"),
        shuffle_files=True, decoders=_DECODERS,
        read_config=tfds.ReadConfig(shuffle_seed=seed, options=_options(),
                                    try_autocache=False, enable_ordering_guard=False))
    ds = ds.filter(lambda ex: tf.reduce_any(tf.logical_not(ex["objects"]["is_crowd"])))
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat(num_epochs).enumerate()

    def draw(index, ex):  # min size, resized size, canvas, flip: cheap, no decoding
      u = tf.random.stateless_uniform([2], seed=tf.stack([tf.constant(seed, tf.int64), index]))
      k = tf.minimum(tf.cast(u[0] * tf.cast(tf.size(min_sizes), tf.float32), tf.int32),
                     tf.size(min_sizes) - 1)
      oh, ow = targets.get_size_tf(ex["height"], ex["width"], min_sizes[k],
                                   input_config.max_size_train)
      resized_hw = tf.stack([oh, ow])
      padded = targets.padded_size_tf(resized_hw, input_config.size_divisibility)
      return dict(ex, _resized_hw=resized_hw, _flip=u[1] < flip_prob,
                  _canvas=targets.canvas_index_tf(padded, canvases))
    return ds.map(draw)

  streams = []
  for i, canvas in enumerate(canvases):
    ds = base().filter(lambda ex, i=i: tf.equal(ex["_canvas"], i))
    ds = ds.map(lambda ex, canvas=canvas: _train_example(
        ex, canvas=canvas, input_config=input_config, max_instances=max_instances,
        semantic_resize=semantic_resize, mask_format=mask_format, image_resize=image_resize,
        require_semantic=require_semantic), num_parallel_calls=num_parallel_calls,
        deterministic=True)
    streams.append(ds.batch(batch_size, drop_remainder=True, num_parallel_calls=num_parallel_calls,
                            deterministic=True))
  if len(streams) == 1:
    ds = streams[0]
  else:  # the same seeded canvas sequence on every host
    cum = tf.constant(np.cumsum(probs)[:-1], tf.float32)
    choice = tf.data.Dataset.random(seed=seed).map(
        lambda r: tf.reduce_sum(tf.cast(
            tf.cast(r % (1 << 24), tf.float32) / float(1 << 24) >= cum, tf.int64)))
    ds = tf.data.Dataset.choose_from_datasets(streams, choice, stop_on_empty_dataset=True)
  return ds.prefetch(prefetch).with_options(_options())


def make_eval_dataset(builder: tfds.core.DatasetBuilder, *, split: str, input_config,
                      batch_size: int, process_index: int | None = None,
                      process_count: int | None = None, image_resize: str = "pil",
                      max_images: int = -1, num_parallel_calls: int = tf.data.AUTOTUNE,
                      prefetch: int = 2) -> tuple[tf.data.Dataset, EvalPlan]:
  """Eval batches of this host: every image of the split exactly once over all hosts.

  Host p reads a contiguous slice of the examples (ascending image id); its batches come canvas
  by canvas (preference order), each canvas padded to the step count of the host with most
  images in it, so all hosts run `plan.num_steps` steps with the same shapes.

  Args:
    batch_size: per-host batch (global eval batch / process_count).
    image_resize: 'pil' (default, bit-exact with the original test transform) or 'tf'.
    max_images: evaluate the first `max_images` images (ascending id); -1 for all.
  Returns:
    (dataset, plan).
  """
  process_index, process_count = _process(process_index, process_count)
  meta = split_metadata(builder, split)
  plan, canvas_idx, rows = plan_eval(meta, input_config, batch_size, process_index,
                                     process_count, max_images)
  canvases = sort_canvases(input_config.canvas_sizes)
  ids = meta["image_id"][rows.start:rows.stop]
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.int64),
                                          tf.constant(canvas_idx, tf.int64)), default_value=-1)
  out = None
  for canvas, steps in plan.canvas_steps:
    i = canvases.index(canvas)
    n_real = int((canvas_idx == i).sum())
    ds = tf.data.Dataset.from_tensors(_eval_padding(canvas)).repeat(steps * batch_size - n_real)
    if n_real:
      real = builder.as_dataset(
          split=tfds.core.ReadInstruction(split, from_=rows.start, to=rows.stop, unit="abs"),
          shuffle_files=False, decoders=_DECODERS,
          read_config=tfds.ReadConfig(interleave_cycle_length=1, options=_options()))
      real = real.filter(lambda ex, i=i: tf.equal(table.lookup(ex["image_id"]), i))
      real = real.map(lambda ex, canvas=canvas: _eval_example(
          ex, canvas=canvas, input_config=input_config, image_resize=image_resize),
          num_parallel_calls=num_parallel_calls, deterministic=True)
      ds = real.concatenate(ds)
    ds = ds.batch(batch_size, drop_remainder=True)
    out = ds if out is None else out.concatenate(ds)
  if out is None:
    raise ValueError(f"split {split!r} has no image to evaluate")
  return out.prefetch(prefetch).with_options(_options()), plan


# ------------------------------------------------------------------ from a config


def _get(cfg, key: str, default: Any) -> Any:
  return cfg.get(key, default) if hasattr(cfg, "get") else default


def create_train_dataset(config, builder: tfds.core.DatasetBuilder | None = None, *,
                         process_index: int | None = None,
                         process_count: int | None = None) -> tf.data.Dataset:
  """`make_train_dataset` from a full config (config.data, config.input, config.train, seed)."""
  from rap_jax.data import coco  # pylint: disable=g-import-not-at-top
  process_index, process_count = _process(process_index, process_count)
  builder = builder or coco.get_builder(config.data)
  gbs = int(config.train.global_batch_size)
  if gbs % process_count:
    raise ValueError(f"train.global_batch_size {gbs} is not divisible by {process_count} hosts")
  return make_train_dataset(
      builder, split=config.data.train_split, input_config=config.input,
      batch_size=gbs // process_count, max_instances=config.data.max_instances,
      seed=config.seed, shuffle_buffer=config.data.shuffle_buffer,
      process_index=process_index, process_count=process_count,
      semantic_resize=_get(config.input, "semantic_label_resize", "bilinear"),
      mask_format=_get(config.data, "mask_format", "canvas"),
      image_resize=_get(config.input, "train_image_resize", "tf"))


def create_eval_dataset(config, builder: tfds.core.DatasetBuilder | None = None, *,
                        process_index: int | None = None, process_count: int | None = None
                        ) -> tuple[tf.data.Dataset, EvalPlan]:
  """`make_eval_dataset` from a full config (config.data, config.input, config.eval)."""
  from rap_jax.data import coco  # pylint: disable=g-import-not-at-top
  process_index, process_count = _process(process_index, process_count)
  builder = builder or coco.get_builder(config.data)
  gbs = int(config.eval.batch_size)
  if gbs % process_count:
    raise ValueError(f"eval.batch_size {gbs} is not divisible by {process_count} hosts")
  return make_eval_dataset(
      builder, split=config.data.eval_split, input_config=config.input,
      batch_size=gbs // process_count, process_index=process_index,
      process_count=process_count, max_images=int(_get(config.eval, "max_images", -1)),
      image_resize=_get(config.input, "eval_image_resize", "pil"))


class NumpyIterator:
  """Iterator of numpy dict batches over a tf.data dataset, closed at interpreter exit.

  The pipelines call Python (cv2/PIL through `tf.numpy_function`) from tf.data threads; a TF
  iterator still alive while Python finalises deadlocks, so every open iterator is closed by an
  `atexit` hook (and by `close()` or `with`).
  """

  def __init__(self, ds: tf.data.Dataset):
    self._it = iter(ds)
    _OPEN_ITERATORS.add(self)

  def __iter__(self) -> "NumpyIterator":
    return self

  def __next__(self) -> dict:
    if self._it is None:
      raise StopIteration
    return tf.nest.map_structure(lambda t: t.numpy(), next(self._it))

  def close(self) -> None:
    self._it = None
    _OPEN_ITERATORS.discard(self)

  def __enter__(self) -> "NumpyIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_OPEN_ITERATORS: "weakref.WeakSet[NumpyIterator]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for it in list(_OPEN_ITERATORS):
    it.close()


def as_numpy(ds: tf.data.Dataset) -> NumpyIterator:
  """Iterator of numpy dict batches (use this rather than `iter(ds)`: see NumpyIterator)."""
  return NumpyIterator(ds)
