"""Host-side image transforms of the original (SPEC §3): resize rule, BGR normalisation, canvases.

These are numpy/PIL functions (run before jit). The tf.data pipeline uses the same `get_size`.
"""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image


def get_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
  """Resized (height, width) of an image under the original rule (SPEC §3 step 2).

  The short side becomes `min_size` unless the long side would exceed `max_size`; then the short
  side is `round(max_size * short / long)` (Python round, half to even) and the long side follows
  by truncation, exactly as `data/transforms/transforms.py::Resize.get_size`.
  """
  size = float(min_size)
  min_orig = float(min(width, height))
  max_orig = float(max(width, height))
  if max_orig / min_orig * size > max_size:
    size = int(round(max_size * min_orig / max_orig))
  size = int(size)
  if (width <= height and width == size) or (height <= width and height == size):
    return int(height), int(width)
  if width < height:
    ow = size
    oh = int(size * height / width)
  else:
    oh = size
    ow = int(size * width / height)
  return oh, ow


def padded_size(height: int, width: int, divisibility: int = 32) -> tuple[int, int]:
  """Zero-padded network size of one image: each side rounded up to `divisibility`."""
  return (int(math.ceil(height / divisibility) * divisibility),
          int(math.ceil(width / divisibility) * divisibility))


def load_image(path: str | pathlib.Path) -> np.ndarray:
  """Read an image file as RGB uint8 [H, W, 3] (PIL `convert('RGB')`, as torchvision does).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a readable image (names the file).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image not found: {path}")
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def resize_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
  """PIL bilinear resize of an RGB uint8 image to (height, width) (torchvision 0.2.2 `F.resize`)."""
  if rgb.shape[0] == height and rgb.shape[1] == width:
    return rgb
  im = Image.fromarray(rgb)
  return np.asarray(im.resize((width, height), Image.BILINEAR))


def normalize_image(rgb: np.ndarray, pixel_mean: Sequence[float],
                    pixel_std: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
  """RGB uint8 [H, W, 3] -> float32 BGR 0..255 minus mean, / std (SPEC §3 step 3). NHWC."""
  x = rgb.astype(np.float32) / np.float32(255.0)  # to_tensor
  x = x[..., ::-1] * np.float32(255.0)  # BGR, 0..255 (exact round trip)
  x = (x - np.asarray(pixel_mean, np.float32)) / np.asarray(pixel_std, np.float32)
  return np.ascontiguousarray(x, dtype=np.float32)


def choose_canvas(padded_hw: tuple[int, int],
                  canvas_sizes: Sequence[Sequence[int]]) -> tuple[int, int]:
  """Smallest configured canvas (by area) that holds `padded_hw`.

  Raises:
    ValueError: no configured canvas is large enough (names the size and the canvases).
  """
  fits = [tuple(int(v) for v in c) for c in canvas_sizes
          if c[0] >= padded_hw[0] and c[1] >= padded_hw[1]]
  if not fits:
    raise ValueError(f"no canvas in input.canvas_sizes={list(map(tuple, canvas_sizes))} holds a "
                     f"padded image of size {tuple(padded_hw)}; add a larger canvas to the config")
  return min(fits, key=lambda c: (c[0] * c[1], c))


def preprocess_for_test(rgb: np.ndarray, input_config) -> tuple[np.ndarray, dict]:
  """One image through the original test transform.

  Args:
    rgb: [H, W, 3] uint8, original image.
    input_config: `config.input` (min/max test size, pixel mean/std, size divisibility).
  Returns:
    image: [h', w', 3] float32 normalised BGR (not padded).
    info: dict with `original_hw` (H, W), `resized_hw` (h', w'), `padded_hw` (Hp, Wp).
  """
  h0, w0 = int(rgb.shape[0]), int(rgb.shape[1])
  oh, ow = get_size(w0, h0, input_config.min_size_test, input_config.max_size_test)
  resized = resize_image(rgb, oh, ow)
  image = normalize_image(resized, input_config.pixel_mean, input_config.pixel_std)
  info = dict(original_hw=(h0, w0), resized_hw=(oh, ow),
              padded_hw=padded_size(oh, ow, input_config.size_divisibility))
  return image, info


def pad_to_canvas(image: np.ndarray, canvas_hw: tuple[int, int]) -> np.ndarray:
  """Zero-pad [h, w, C] at the bottom/right to [Hc, Wc, C] (padding value 0 after normalisation)."""
  h, w = image.shape[:2]
  if h > canvas_hw[0] or w > canvas_hw[1]:
    raise ValueError(f"image of size {(h, w)} does not fit the canvas {tuple(canvas_hw)}")
  out = np.zeros((canvas_hw[0], canvas_hw[1]) + image.shape[2:], image.dtype)
  out[:h, :w] = image
  return out
