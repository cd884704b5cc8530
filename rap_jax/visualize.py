"""Panoptic overlays for people: segment colours over the photo, instance outlines, depth order.

Predict mode writes one PNG per image to `<workdir>/vis/<stem>.png` (`write_overlay`):

* every segment is blended over the photo in its panoptic colour (the colour of its id in the
  panoptic PNG, i.e. the category colour or a jittered one for repeated things);
* thing segments get a white outline (their visible pixels after the fusion), stuff segments a
  thin darker border;
* every thing segment carries a label "<rank> <category>" at its centre, rank 1 = nearest to the
  camera: RAP ranks by relation value (smaller = nearer, SPEC §2.9), OCFusion by how many other
  placed instances it occludes minus how many occlude it (pairwise matrix, SPEC §5.3), the
  heuristic by paint order (earlier = higher score = kept on top). Nearer instances get the best
  label spots and are drawn last; labels are shifted so that they do not overlap.

PIL and numpy only, on the host.
"""
from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rap_jax import panoptic_io
from rap_jax.data import categories as cats


# ----------------------------------------------------------------------------- depth order
def depth_ranks_from_relation(relation: Sequence[float]) -> np.ndarray:
  """[N] relation values (smaller = nearer) -> [N] ranks 1..N, ties in the given order."""
  order = np.argsort(np.asarray(relation, np.float64), kind="stable")
  ranks = np.empty(len(order), np.int64)
  ranks[order] = np.arange(1, len(order) + 1)
  return ranks


def depth_ranks_from_occlusion(occlusion: np.ndarray) -> np.ndarray:
  """[N, N] bool, [i, j] = i occludes j -> [N] ranks 1..N (more net occlusions = nearer).

  A pairwise matrix need not be a consistent order; the net count (occludes - occluded by) is a
  simple total order that respects every mutual pair, ties in the given order.
  """
  occ = np.asarray(occlusion, bool)
  front = occ & ~occ.T                               # one-sided: i in front of j
  np.fill_diagonal(front, False)
  net = front.sum(1) - front.sum(0)
  order = np.argsort(-net, kind="stable")
  ranks = np.empty(len(order), np.int64)
  ranks[order] = np.arange(1, len(order) + 1)
  return ranks


# ----------------------------------------------------------------------------- drawing
def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:                                 # Pillow < 10.1: fixed bitmap font
    return ImageFont.load_default()


def _segment_color(segment: dict) -> np.ndarray:
  if "color" in segment:
    return np.asarray(segment["color"], np.float32)
  if "id" in segment:
    return np.asarray(panoptic_io.id2rgb(int(segment["id"])), np.float32)
  return np.asarray(cats.category(segment["category_id"]).color, np.float32)


def _label_anchor(ys: np.ndarray, xs: np.ndarray) -> tuple[int, int]:
  """A pixel of the segment near its centroid (the centroid itself may lie outside it)."""
  cy, cx = ys.mean(), xs.mean()
  k = np.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
  return int(ys[k]), int(xs[k])


def _place(box: tuple[int, int, int, int], placed: list, h: int, w: int):
  """Shift a label box (x0, y0, x1, y1) off already placed ones: first free of 9 candidates."""
  x0, y0, x1, y1 = box
  bw, bh = x1 - x0, y1 - y0
  for dy, dx in ((0, 0), (1, 0), (-1, 0), (2, 0), (-2, 0), (0, 1), (0, -1), (1, 1), (-1, -1)):
    nx = min(max(x0 + dx * (bw // 2 + 1), 0), max(w - bw, 0))
    ny = min(max(y0 + dy * (bh + 1), 0), max(h - bh, 0))
    cand = (nx, ny, nx + bw, ny + bh)
    if all(cand[2] <= p[0] or p[2] <= cand[0] or cand[3] <= p[1] or p[3] <= cand[1]
           for p in placed):
      return cand
  return box


def render_panoptic_overlay(image_rgb: np.ndarray, segment_map: np.ndarray,
                            segments: Sequence[dict], *, alpha: float = 0.6,
                            stuff_alpha: float = 0.35, title: str | None = None) -> np.ndarray:
  """Blend segments over a photo, outline things, label depth ranks.

  image_rgb: [H, W, 3] uint8 photo (original size).
  segment_map: [H, W] int, 0 = unassigned, s + 1 = segments[s].
  segments: per slot, {"category_id", optional "isthing" (default from the category table),
    "id" (panoptic id: colour id2rgb(id)) or "color", optional "rank" (int, 1 = nearest; drawn for
    things), optional "text" (label text, default "<rank> <category name>")}.
  alpha / stuff_alpha: colour weight over the photo for things / stuff.
  Returns [H, W, 3] uint8.
  """
  image = np.asarray(image_rgb)
  seg = np.asarray(segment_map)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image_rgb must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
  if seg.shape != image.shape[:2]:
    raise ValueError(f"segment_map {seg.shape} does not match the image {image.shape[:2]}")
  if seg.size and (seg.min() < 0 or seg.max() > len(segments)):
    raise ValueError(f"segment_map refers to slots outside the {len(segments)} segments")
  h, w = seg.shape
  n = len(segments)
  colors = np.zeros((n + 1, 3), np.float32)
  is_thing = np.zeros(n + 1, bool)
  for s, segment in enumerate(segments):
    colors[s + 1] = _segment_color(segment)
    is_thing[s + 1] = segment.get("isthing", cats.is_thing(segment["category_id"]))

  out = image.astype(np.float32)
  assigned = seg > 0
  weight = np.where(is_thing, alpha, stuff_alpha).astype(np.float32)[seg][..., None]   # [H, W, 1]
  out = np.where(assigned[..., None], (1 - weight) * out + weight * colors[seg], out)

  # boundaries: a pixel whose right or lower neighbour belongs to another segment (both sides)
  edge = np.zeros((h, w), bool)
  diff_x = seg[:, 1:] != seg[:, :-1]
  diff_y = seg[1:, :] != seg[:-1, :]
  edge[:, 1:] |= diff_x
  edge[:, :-1] |= diff_x
  edge[1:, :] |= diff_y
  edge[:-1, :] |= diff_y
  thing_px = is_thing[seg]
  stuff_edge = edge & assigned & ~thing_px
  out[stuff_edge] = 0.5 * colors[seg[stuff_edge]]
  thing_edge = edge & thing_px
  width = max(1, round(min(h, w) / 400))
  for _ in range(width - 1):                         # thicken inwards on big images
    grown = thing_edge.copy()
    grown[1:] |= thing_edge[:-1]
    grown[:-1] |= thing_edge[1:]
    grown[:, 1:] |= thing_edge[:, :-1]
    grown[:, :-1] |= thing_edge[:, 1:]
    thing_edge = grown & thing_px
  out[thing_edge] = 255.0

  canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  font = _font(max(13, min(h, w) // 36))
  labels = []
  for s, segment in enumerate(segments):
    if not is_thing[s + 1] or ("rank" not in segment and "text" not in segment):
      continue
    ys, xs = np.nonzero(seg == s + 1)
    if not len(ys):
      continue
    text = segment.get("text") or f"{segment['rank']} {cats.category(segment['category_id']).name}"
    labels.append((segment.get("rank", 0), _label_anchor(ys, xs), text, colors[s + 1]))
  # place nearest first (they get the best spots), draw them last (on top)
  boxes, placed = [], []
  if title:
    left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
    placed.append((0, 0, right - left + 8, bottom - top + 8))
  for _, (y, x), text, color in sorted(labels, key=lambda t: t[0]):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(2, th // 4)
    x0 = min(max(x - tw // 2 - pad, 0), max(w - tw - 2 * pad, 0))
    y0 = min(max(y - th // 2 - pad, 0), max(h - th - 2 * pad, 0))
    box = _place((x0, y0, x0 + tw + 2 * pad, y0 + th + 2 * pad), placed, h, w)
    placed.append(box)
    boxes.append((box, text, color, pad, left, top))
  for box, text, color, pad, left, top in reversed(boxes):
    draw.rectangle(box, fill=(0, 0, 0), outline=tuple(int(c) for c in color),
                   width=max(1, pad // 2))
    draw.text((box[0] + pad - left, box[1] + pad - top), text, fill=(255, 255, 255), font=font)
  if title:
    left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
    draw.rectangle((0, 0, right - left + 8, bottom - top + 8), fill=(0, 0, 0))
    draw.text((4 - left, 4 - top), title, fill=(255, 255, 255), font=font)
  return np.asarray(canvas)


def fusion_segments(result: Any, *, method: str, relation: np.ndarray | None = None,
                    occlusion: np.ndarray | None = None,
                    segments_info: Sequence[dict] | None = None) -> list[dict]:
  """Segments of one image's FusionResult with depth ranks for its thing segments.

  method: 'rap' (ranks from relation [K]), 'ocfusion' (from occlusion [K, K], detection order) or
  'heuristic' (paint order). segments_info: the list `panoptic_io.fusion_to_panoptic` returned,
  so that colours equal the panoptic PNG's (else category colours).
  """
  n = int(np.asarray(result.num_segments))
  category = np.asarray(result.segment_category)[:n]
  thing = np.asarray(result.segment_is_thing)[:n]
  instance = np.asarray(result.segment_instance)[:n]
  segments = [{"category_id": int(c), "isthing": bool(t)} for c, t in zip(category, thing)]
  if segments_info is not None:
    if len(segments_info) != n:
      raise ValueError(f"segments_info has {len(segments_info)} entries, the result {n}")
    for segment, info in zip(segments, segments_info):
      segment["id"] = int(info["id"])
  things = np.nonzero(thing)[0]
  det = instance[things]
  if method == "rap":
    if relation is None:
      raise ValueError("method 'rap' needs the relation values to rank depth")
    ranks = depth_ranks_from_relation(np.asarray(relation, np.float32)[det])
  elif method == "ocfusion":
    if occlusion is None:
      raise ValueError("method 'ocfusion' needs the occlusion matrix to rank depth")
    ranks = depth_ranks_from_occlusion(np.asarray(occlusion, bool)[np.ix_(det, det)])
  elif method == "heuristic":
    ranks = np.arange(1, len(things) + 1)
  else:
    raise ValueError(f"unknown fusion method {method!r}")
  for s, rank in zip(things, ranks):
    segments[s]["rank"] = int(rank)
  return segments


_TITLES = {"rap": "depth: 1 = nearest (RAP relation values)",
           "ocfusion": "depth: 1 = nearest (OCFusion occlusion matrix)",
           "heuristic": "order: 1 = highest score, kept on top (heuristic)"}


def render_fusion(image_rgb: np.ndarray, result: Any, *, method: str,
                  relation: np.ndarray | None = None, occlusion: np.ndarray | None = None,
                  segments_info: Sequence[dict] | None = None, title: bool = True) -> np.ndarray:
  """Overlay for one image's FusionResult (canvas cropped to the photo's size).

  image_rgb: [H, W, 3] uint8; result: FusionResult of this image (canvas >= H x W);
  relation [K] / occlusion [K, K] in detection order as given to the fusion.
  """
  image = np.asarray(image_rgb)
  h, w = image.shape[:2]
  seg_map = np.asarray(result.segment_map)
  if seg_map.ndim != 2 or seg_map.shape[0] < h or seg_map.shape[1] < w:
    raise ValueError(f"segment_map {seg_map.shape} cannot hold an image of size {(h, w)}")
  segments = fusion_segments(result, method=method, relation=relation, occlusion=occlusion,
                             segments_info=segments_info)
  return render_panoptic_overlay(image, seg_map[:h, :w], segments,
                                 title=_TITLES[method] if title else None)


def write_overlay(workdir: str | os.PathLike, stem: str, overlay_rgb: np.ndarray) -> pathlib.Path:
  """Save `<workdir>/vis/<stem>.png` atomically; returns the path."""
  if not stem or "/" in stem or "\\" in stem:
    raise ValueError(f"invalid file stem {stem!r}")
  overlay = np.asarray(overlay_rgb)
  if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
    raise ValueError(f"overlay must be [H, W, 3] uint8, got {overlay.shape} {overlay.dtype}")
  path = pathlib.Path(workdir) / "vis" / f"{stem}.png"
  buffer = io.BytesIO()
  Image.fromarray(overlay).save(buffer, format="PNG")
  panoptic_io.atomic_write_bytes(path, buffer.getvalue())
  return path
