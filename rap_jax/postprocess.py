"""Per-image post-processing to the original resolution (SPEC §4.1), jitted, static shapes.

1. Boxes resized by (W/w', H/h') (ratios computed in float64 on the host side of the original,
   applied as float32 multiplies).
2. Masks pasted with the original `Masker(0.5, padding 1)` (`rap_jax.ops.masks`).
3. Semantic map: quarter logits -> x4 bilinear (align_corners=True) to the padded size, then
   resized to (H, W) (align_corners=True), softmax, argmax. By default the PADDED logits are
   resized, squeezing the padding into the picture as the original does (SPEC §11.3); with
   `semantic_crop_padding=True` only the resized image area is used (the fix).
Outputs live in a static output canvas (Ho, Wo) >= (H, W); pixels beyond (H, W) are 0/False.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rap_jax.ops.masks import paste_masks, paste_windows
from rap_jax.ops.resize import resize_bilinear


def resize_ratios(original_hw, resized_hw):
  """Per-image float32 (ratio_h, ratio_w) = (H/h', W/w') computed in float64 then rounded.

  Args: [N, 2] int arrays (host numpy). Returns numpy float32 [N, 2].
  """
  o = np.asarray(original_hw, np.float64)
  r = np.asarray(resized_hw, np.float64)
  return (o / r).astype(np.float32)


def boxes_to_original(boxes, ratios):
  """boxes [D, 4] in resized pixels, ratios [2] (ratio_h, ratio_w) -> [D, 4] original pixels."""
  rh, rw = ratios[0], ratios[1]
  return boxes * jnp.stack([rw, rh, rw, rh])


def semantic_segmentation(quarter_logits, padded_hw, resized_hw, original_hw,
                          out_hw: tuple[int, int], crop_padding: bool = False):
  """quarter_logits [hq, wq, C] (valid padded/4) -> [Ho, Wo] int32 channel ids (0 outside)."""
  hq, wq, _ = quarter_logits.shape
  full_canvas = (4 * hq, 4 * wq)
  full = resize_bilinear(quarter_logits, full_canvas, in_size_hw=(padded_hw[0] // 4,
                                                                  padded_hw[1] // 4),
                         out_size_hw=(padded_hw[0], padded_hw[1]), align_corners=True)
  src_hw = (resized_hw[0], resized_hw[1]) if crop_padding else (padded_hw[0], padded_hw[1])
  logits = resize_bilinear(full, out_hw, in_size_hw=src_hw,
                           out_size_hw=(original_hw[0], original_hw[1]), align_corners=True)
  probs = jax.nn.softmax(logits, axis=-1)
  seg = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  rows = jnp.arange(out_hw[0])[:, None] < original_hw[0]
  cols = jnp.arange(out_hw[1])[None, :] < original_hw[1]
  return jnp.where(rows & cols, seg, 0)


def postprocess_image(outputs: dict, padded_hw, resized_hw, original_hw, ratios,
                      out_hw: tuple[int, int], mask_threshold: float = 0.5,
                      mask_padding: int = 1, crop_padding: bool = False) -> dict:
  """One image's model outputs -> fusion inputs at original resolution.

  Args:
    outputs: the model outputs of ONE image (no batch axis): det_boxes [D, 4], det_valid [D],
      mask_probs [D, 28, 28], semantic_logits [hq, wq, 55], ...
    padded_hw, resized_hw, original_hw: [2] int32; ratios: [2] float32 (H/h', W/w').
    out_hw: static output canvas.
  Returns:
    dict: `boxes` [D, 4] original pixels, `masks` [D, Ho, Wo] bool, `mask_windows` [D, 4]
    int32 (y0, x0, y1, x1) bounds of every True mask pixel, `semantic` [Ho, Wo] int32.
  """
  boxes = boxes_to_original(outputs["det_boxes"], ratios)
  masks = paste_masks(outputs["mask_probs"], boxes, out_hw, original_hw[0], original_hw[1],
                      mask_threshold, mask_padding, valid=outputs["det_valid"])
  windows = paste_windows(boxes, original_hw[0], original_hw[1], outputs["mask_probs"].shape[-1],
                          mask_padding)
  semantic = semantic_segmentation(outputs["semantic_logits"], padded_hw, resized_hw,
                                   original_hw, out_hw, crop_padding)
  return dict(boxes=boxes, masks=masks, mask_windows=windows, semantic=semantic)


def postprocess_batch(outputs: dict, padded_hw, resized_hw, original_hw, ratios,
                      out_hw: tuple[int, int], mask_threshold: float = 0.5,
                      mask_padding: int = 1, crop_padding: bool = False) -> dict:
  """`postprocess_image` over the batch (all arrays with a leading N axis).

  vmapped on accelerators; on CPU images go one after the other (`lax.map`) so that empty
  detection slots are really skipped when pasting (see `paste_masks`).
  """
  keys = ("det_boxes", "det_valid", "mask_probs", "semantic_logits")
  sub = {k: outputs[k] for k in keys}
  fn = lambda o, p, r, h, q: postprocess_image(o, p, r, h, q, out_hw, mask_threshold,
                                               mask_padding, crop_padding)
  args = (sub, padded_hw, resized_hw, original_hw, ratios)
  if jax.default_backend() == "cpu":
    return jax.lax.map(lambda a: fn(*a), args)
  return jax.vmap(fn)(*args)
