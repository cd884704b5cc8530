"""Per-image TensorFlow ops of the input pipeline: resize rule, box/mask/label resize, flip, pads.

Everything here runs inside tf.data `map` functions on ONE image (no batch axis) and reproduces
the original's training transform (SPEC §3, §6.1; `data/transforms/transforms.py` Resize and
RandomHorizontalFlip, `structures/bounding_box.py` resize/transpose):

* sizes: `get_size_tf` == `rap_jax.data.transforms.get_size` (float64, Python rounding rules);
* boxes: xyxy pixels, "+1" convention, scaled in float32 by one ratio (or per axis when the two
  ratios differ), flipped as `x1' = w - x2 - 1`, `x2' = w - x1 - 1` (w = resized width);
* semantic label: the original's accidental cv2 INTER_LINEAR resize (SPEC §11.15) by default,
  through cv2 itself (`tf.numpy_function`), or nearest (the fix);
* masks: amodal 0/1 bitmaps resized with nearest neighbour (half-pixel centres, TF2 default).
  The original instead scales the polygons and rasterises them per proposal at 28x28; bitmaps
  differ from that by at most the pixels a nearest resize moves (documented in input_pipeline).
"""
from __future__ import annotations

import io
from typing import Sequence

import cv2
import numpy as np
from PIL import Image
import tensorflow as tf

from rap_jax.data import transforms

try:  # TensorFlow must never take the GPUs from JAX.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  pass

SEMANTIC_RESIZE_METHODS = ("bilinear", "nearest")
IMAGE_RESIZE_BACKENDS = ("tf", "pil")


def get_size_tf(height: tf.Tensor, width: tf.Tensor, min_size: tf.Tensor,
                max_size: float) -> tuple[tf.Tensor, tf.Tensor]:
  """`transforms.get_size` in TF: resized (h', w') int32 of an (H, W) image (SPEC §3 step 2).

  float64 arithmetic in the same operation order as the Python rule; `tf.round` rounds half to
  even like Python's `round`, and the casts truncate like `int()` (all values are >= 0).
  """
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  size = tf.cast(min_size, tf.float64)
  max_size = tf.constant(max_size, tf.float64)
  min_orig, max_orig = tf.minimum(w, h), tf.maximum(w, h)
  size = tf.where(max_orig / min_orig * size > max_size,
                  tf.round(max_size * min_orig / max_orig), size)
  size = tf.floor(size)
  keep = ((w <= h) & tf.equal(w, size)) | ((h <= w) & tf.equal(h, size))
  ow = tf.where(w < h, size, tf.floor(size * w / h))
  oh = tf.where(w < h, tf.floor(size * h / w), size)
  oh = tf.where(keep, h, oh)
  ow = tf.where(keep, w, ow)
  return tf.cast(oh, tf.int32), tf.cast(ow, tf.int32)


def padded_size_tf(size: tf.Tensor, divisibility: int) -> tf.Tensor:
  """Each side rounded up to a multiple of `divisibility` (int32)."""
  d = tf.constant(divisibility, tf.int32)
  return (size + d - 1) // d * d


def canvas_index_tf(padded_hw: tf.Tensor, canvases: Sequence[Sequence[int]]) -> tf.Tensor:
  """Index into `canvases` (ordered by preference) of the first that holds `padded_hw`; -1 if none.

  `canvases` should be sorted by area (see `input_pipeline.sort_canvases`) so that this is the
  smallest fitting canvas, as `transforms.choose_canvas` picks.
  """
  c = tf.constant(np.asarray(canvases, np.int32).reshape(-1, 2))  # [C, 2]
  fits = tf.reduce_all(c >= padded_hw[None, :], axis=1)  # [C]
  idx = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  return tf.where(tf.reduce_any(fits), idx, -1)


def resize_boxes(boxes: tf.Tensor, original_hw: tf.Tensor, resized_hw: tf.Tensor) -> tf.Tensor:
  """Scale xyxy boxes [N, 4] float32 like `BoxList.resize` (ratios in float64, products float32).

  One ratio when both axes agree, else x by w'/W and y by h'/H (the original's two branches give
  the same numbers, so one per-axis product covers both).
  """
  ratio = tf.cast(resized_hw, tf.float64) / tf.cast(original_hw, tf.float64)  # (rh, rw)
  ratio = tf.cast(ratio, tf.float32)
  scale = tf.stack([ratio[1], ratio[0], ratio[1], ratio[0]])  # [4]
  return boxes * scale[None, :]


def flip_boxes(boxes: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Horizontal flip of xyxy boxes [N, 4] in an image of `width` pixels: x' = (w - x) - 1."""
  w = tf.cast(width, tf.float32)
  x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
  return tf.stack([(w - x2) - 1.0, y1, (w - x1) - 1.0, y2], axis=1)


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG bytes -> [H, W, 3] uint8 (grey replicated, alpha dropped, like PIL convert('RGB'))."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize_image_tf(image: tf.Tensor, resized_hw: tf.Tensor) -> tf.Tensor:
  """Antialiased bilinear resize [H, W, 3] uint8 -> [h', w', 3] uint8 (rounded, clipped).

  Antialiasing widens the triangle kernel when downscaling, which is what PIL's BILINEAR does:
  versus the original's PIL resize the result differs by at most 1 grey level (on about 15% of
  the pixels of the training fixture images); without antialiasing it would differ by up to ~60.
  """
  x = tf.image.resize(image, resized_hw, method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _pil_decode_resize(image_bytes: bytes, height: np.int32, width: np.int32) -> np.ndarray:
  with Image.open(io.BytesIO(image_bytes)) as im:
    rgb = np.asarray(im.convert("RGB"))
  return transforms.resize_image(rgb, int(height), int(width))


def decode_resize_image_pil(image_bytes: tf.Tensor, resized_hw: tf.Tensor) -> tf.Tensor:
  """PIL decode + `convert('RGB')` + BILINEAR resize: bit-exact with the original test transform."""
  out = tf.numpy_function(_pil_decode_resize, [image_bytes, resized_hw[0], resized_hw[1]],
                          tf.uint8, stateful=False)
  out.set_shape([None, None, 3])
  return out


def normalize_image_tf(image: tf.Tensor, pixel_mean: Sequence[float],
                       pixel_std: Sequence[float]) -> tf.Tensor:
  """RGB uint8 -> float32 BGR 0..255 minus mean, / std, bit-equal to `transforms.normalize_image`.

  The original's `/ 255` then `* 255` is the identity on the 256 uint8 values in float32 (checked
  exhaustively in the tests), and so is `/ 1`: both are skipped.
  """
  x = tf.reverse(tf.cast(image, tf.float32), axis=[-1]) - tf.constant(pixel_mean, tf.float32)
  if any(float(s) != 1.0 for s in pixel_std):
    x = x / tf.constant(pixel_std, tf.float32)
  return x


def _cv2_linear(label: np.ndarray, height: np.int32, width: np.int32) -> np.ndarray:
  return cv2.resize(label, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def resize_semantic(label: tf.Tensor, resized_hw: tf.Tensor, method: str = "bilinear") -> tf.Tensor:
  """Semantic label [H, W] uint8 -> [h', w'] uint8.

  method 'bilinear' (default) is the original's accident (SPEC §11.15): `cv2.resize(v, size,
  cv2.INTER_NEAREST)` passes INTER_NEAREST as `dst`, so OpenCV's uint8 INTER_LINEAR runs and
  class boundaries get blended label values. cv2 itself runs here (its fixed-point kernel and
  its area fast path for exact 2x reductions are not worth re-deriving in TF); equal to the
  fixtures' `gt{i}_semantic_label`. method 'nearest' is the fix, with TF's nearest (half-pixel
  centres), the same sampling as the instance masks.
  """
  if method == "bilinear":
    out = tf.numpy_function(_cv2_linear, [label, resized_hw[0], resized_hw[1]], tf.uint8,
                            stateful=False)
    out.set_shape([None, None])
    return out
  if method == "nearest":
    return resize_masks(label[None], resized_hw)[0]
  raise ValueError(f"semantic resize method must be one of {SEMANTIC_RESIZE_METHODS}, "
                   f"got {method!r}")


def decode_masks(mask_pngs: tf.Tensor, original_hw: tf.Tensor) -> tf.Tensor:
  """[N] PNG strings -> [N, H, W] uint8 0/1 (N may be 0)."""
  masks = tf.map_fn(lambda s: tf.io.decode_png(s, channels=1)[..., 0], mask_pngs,
                    fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
  return tf.reshape(masks, tf.concat([tf.shape(mask_pngs), original_hw], axis=0))


def nearest_indices(in_size: tf.Tensor, out_size: tf.Tensor, flip: tf.Tensor | bool = False
                    ) -> tf.Tensor:
  """Source index of each output pixel of a nearest resize, optionally mirrored.

  TF2's `tf.image.resize(method='nearest')` rule (half-pixel centres, float32 scale):
  src = min(floor((dst + 0.5) * in / out), in - 1). With `flip` the output is reversed, so
  resize + horizontal flip cost one gather.
  """
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  idx = tf.cast(tf.floor((tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale), tf.int32)
  idx = tf.minimum(idx, in_size - 1)
  return tf.cond(tf.convert_to_tensor(flip), lambda: tf.reverse(idx, [0]), lambda: idx)


def resize_masks(masks: tf.Tensor, resized_hw: tf.Tensor, flip: tf.Tensor | bool = False
                 ) -> tf.Tensor:
  """Nearest resize (+ optional horizontal flip) of [N, H, W] masks to [N, h', w'] (N may be 0).

  Equal to `tf.image.resize(masks[..., None], resized_hw, 'nearest')` (then `tf.reverse` on the
  width when flipped), done with two gathers (about 2x faster, dtype kept).
  """
  size = tf.shape(masks)
  out = tf.gather(masks, nearest_indices(size[1], resized_hw[0]), axis=1)
  return tf.gather(out, nearest_indices(size[2], resized_hw[1], flip), axis=2)


def relation_matrix(instance_ids: tf.Tensor, valid: tf.Tensor, pairs: tf.Tensor) -> tf.Tensor:
  """rel[i, j] = instance i is in front of instance j (a (front, back) pair lists them).

  Args:
    instance_ids: [M] int64 annotation ids of the instance slots.
    valid: [M] bool, real (not padded) slots.
    pairs: [R, 2] int64 (front_id, back_id).
  Returns:
    [M, M] bool; False on padded rows/columns.
  """
  front = tf.cast(tf.equal(instance_ids[:, None], pairs[None, :, 0]) & valid[:, None], tf.float32)
  back = tf.cast(tf.equal(instance_ids[:, None], pairs[None, :, 1]) & valid[:, None], tf.float32)
  return tf.matmul(front, back, transpose_b=True) > 0.0  # [M, R] x [R, M]


def pad_to(x: tf.Tensor, shape: Sequence[int | None]) -> tf.Tensor:
  """Zero-pad `x` at the end of every axis to `shape` (None: keep that axis; error if larger)."""
  size = tf.shape(x)
  target = tf.stack([size[i] if s is None else tf.constant(s, tf.int32)
                     for i, s in enumerate(shape)])
  out = tf.pad(x, tf.stack([tf.zeros_like(size), target - size], axis=1))
  out.set_shape(shape)
  return out


def pack_mask_bits(masks: tf.Tensor) -> tf.Tensor:
  """[..., W] 0/1 uint8 -> [..., W // 8] uint8, 8 pixels a byte, first pixel in the high bit.

  Same layout as `np.packbits(masks, axis=-1)`; unpack with `jnp.unpackbits(x, axis=-1)`.
  """
  shape = tf.shape(masks)
  x = tf.reshape(masks, tf.concat([shape[:-1], [shape[-1] // 8, 8]], 0))  # [..., W / 8, 8]
  out = x[..., 7]
  for k in range(7):
    out = tf.bitwise.bitwise_or(out, tf.bitwise.left_shift(x[..., k], tf.constant(7 - k, x.dtype)))
  return out
