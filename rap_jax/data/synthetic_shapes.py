"""Shapes and textures of the built-in synthetic dataset (used by ``rap_jax/data/synthetic.py``).

Thing categories (real COCO ids) each have a recognisable outline made of a few polygons and a
texture; stuff categories (real COCO panoptic stuff ids) each have a distinct full-image texture.

* A thing outline is a list of ``Part(poly, tag)``: ``poly`` [N, 2] float64 vertices (x, y) in
  units of the instance size around the origin, ``tag`` 0 = body (category texture), 1/2 = accent
  parts painted with the category's accent colours (wheels, head, screen, ...). The instance's
  amodal mask is the union of all its polygons; the accents only change the pixels' colours.
* Textures return float32 RGB in 0..255; all randomness comes from the caller's ``numpy`` Generator.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np


class Part(NamedTuple):
  poly: np.ndarray  # [N, 2] float64 (x, y)
  tag: int  # 0 body, 1 accent 1, 2 accent 2


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20, start: float = 0.0,
            stop: float = 2 * np.pi) -> np.ndarray:
  """[n, 2] vertices on an ellipse arc (the full ellipse by default)."""
  closed = np.isclose(stop - start, 2 * np.pi)
  t = np.linspace(start, stop, n, endpoint=not closed)
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
  return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def capsule(cx: float, cy: float, w: float, h: float, n: int = 8) -> np.ndarray:
  """Vertical rectangle of width ``w``, height ``h`` with half-disc ends."""
  r = w / 2
  top = ellipse(cx, cy - h / 2 + r, r, r, n, np.pi, 2 * np.pi)
  bottom = ellipse(cx, cy + h / 2 - r, r, r, n, 0.0, np.pi)
  return np.concatenate([top, bottom])


def regular(cx: float, cy: float, r: float, n: int, rot: float = 0.0) -> np.ndarray:
  t = rot + np.arange(n) * 2 * np.pi / n
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


# ---------------------------------------------------------------- thing outlines (unit size)

def _person(rng: np.random.Generator) -> list[Part]:
  w = rng.uniform(0.28, 0.36)
  return [Part(capsule(0, 0.12, w, 0.74), 0), Part(ellipse(0, -0.37, 0.12, 0.13, 16), 1)]


def _car(rng: np.random.Generator) -> list[Part]:
  h = rng.uniform(0.22, 0.28)
  cabin = np.array([[-0.28, -h / 2], [-0.16, -h / 2 - 0.2], [0.2, -h / 2 - 0.2], [0.32, -h / 2]])
  return [Part(rect(-0.5, -h / 2, 0.5, h / 2), 0), Part(cabin, 1),
          Part(ellipse(-0.3, h / 2, 0.11, 0.11, 14), 2),
          Part(ellipse(0.3, h / 2, 0.11, 0.11, 14), 2)]


def _dog(rng: np.random.Generator) -> list[Part]:
  return [Part(ellipse(0, 0.08, 0.4, 0.2, 20), 0), Part(ellipse(0.36, -0.14, 0.15, 0.13, 14), 0),
          Part(np.array([[0.26, -0.2], [0.3, -0.02], [0.2, -0.05]]), 1),
          Part(np.array([[0.44, -0.22], [0.5, -0.03], [0.4, -0.06]]), 1),
          Part(rect(-0.3, 0.15, -0.2, 0.42), 0), Part(rect(0.15, 0.15, 0.25, 0.42), 0),
          Part(np.array([[-0.38, 0.0], [-0.52, -0.22], [-0.46, -0.24], [-0.33, -0.04]]), 0)]


def _cat(rng: np.random.Generator) -> list[Part]:
  return [Part(ellipse(0, 0.12, 0.26, 0.3, 20), 0), Part(ellipse(0, -0.24, 0.17, 0.15, 16), 0),
          Part(np.array([[-0.16, -0.3], [-0.13, -0.5], [-0.03, -0.36]]), 1),
          Part(np.array([[0.16, -0.3], [0.13, -0.5], [0.03, -0.36]]), 1),
          Part(np.array([[0.22, 0.3], [0.46, 0.1], [0.46, 0.02], [0.2, 0.22]]), 0)]


def _cup(rng: np.random.Generator) -> list[Part]:
  w = rng.uniform(0.5, 0.62)
  handle = np.concatenate([ellipse(w / 2, 0.0, 0.24, 0.22, 10, -np.pi / 2, np.pi / 2),
                           ellipse(w / 2, 0.0, 0.13, 0.11, 10, np.pi / 2, -np.pi / 2)])
  body = np.array([[-w / 2, -0.4], [w / 2, -0.4], [w / 2 - 0.06, 0.4], [-w / 2 + 0.06, 0.4]])
  return [Part(body, 0), Part(handle, 1)]


def _bottle(rng: np.random.Generator) -> list[Part]:
  w = rng.uniform(0.26, 0.34)
  return [Part(rect(-w / 2, -0.2, w / 2, 0.5), 0),
          Part(np.array([[-w / 2, -0.2], [-0.07, -0.34], [0.07, -0.34], [w / 2, -0.2]]), 0),
          Part(rect(-0.07, -0.45, 0.07, -0.34), 0), Part(rect(-0.08, -0.5, 0.08, -0.45), 2),
          Part(rect(-w / 2, 0.05, w / 2, 0.28), 1)]


def _stop_sign(rng: np.random.Generator) -> list[Part]:
  return [Part(regular(0, -0.18, 0.3, 8, np.pi / 8), 0), Part(rect(-0.035, 0.1, 0.035, 0.5), 1)]


def _sports_ball(rng: np.random.Generator) -> list[Part]:
  return [Part(ellipse(0, 0, 0.4, 0.4, 24), 0)]


def _kite(rng: np.random.Generator) -> list[Part]:
  tail = np.array([[0.0, 0.3], [0.05, 0.34], [-0.06, 0.5], [-0.1, 0.47]])
  return [Part(np.array([[0, -0.5], [0.3, -0.12], [0, 0.32], [-0.3, -0.12]]), 0), Part(tail, 1)]


def _tv(rng: np.random.Generator) -> list[Part]:
  return [Part(rect(-0.5, -0.34, 0.5, 0.3), 0), Part(rect(-0.43, -0.28, 0.43, 0.24), 1),
          Part(np.array([[-0.12, 0.3], [0.12, 0.3], [0.2, 0.4], [-0.2, 0.4]]), 0)]


def _umbrella(rng: np.random.Generator) -> list[Part]:
  canopy = ellipse(0, -0.05, 0.5, 0.4, 18, np.pi, 2 * np.pi)
  return [Part(canopy, 0), Part(rect(-0.025, -0.06, 0.025, 0.45), 1)]


# ---------------------------------------------------------------- thing textures

def _stripes(u, v, px, py, base, rng):  # person: horizontal shirt stripes
  band = (np.floor(py / 6) % 2)[..., None]
  return base * (1 - 0.35 * band)


def _gradient(u, v, px, py, base, rng):  # car: metallic vertical gradient
  return base * (0.7 + 0.5 * (1 - v))[..., None]


def _spots(u, v, px, py, base, rng):  # dog: dark spots
  noise = lowfreq(rng, u.shape, 6)
  return base * np.where(noise > 0.62, 0.45, 1.0)[..., None]


def _tabby(u, v, px, py, base, rng):  # cat: diagonal stripes
  band = (np.sin((px + py) * 0.55) > 0.3)[..., None]
  return base * (1 - 0.4 * band)


def _band(u, v, px, py, base, rng):  # cup: body colour, pale band in the middle
  mid = ((v > 0.35) & (v < 0.55))[..., None]
  return np.where(mid, 235.0, base)


def _glass(u, v, px, py, base, rng):  # bottle: vertical highlight
  return base * (0.75 + 0.6 * np.exp(-((u - 0.3) / 0.1) ** 2))[..., None]


def _sign(u, v, px, py, base, rng):  # stop sign: white bar
  bar = ((v > 0.42) & (v < 0.6) & (u > 0.2) & (u < 0.8))[..., None]
  return np.where(bar, 245.0, base)


def _checker(u, v, px, py, base, rng):  # sports ball
  c = ((np.floor(px / 7) + np.floor(py / 7)) % 2)[..., None]
  return np.where(c > 0, 30.0, base)


def _quadrants(u, v, px, py, base, rng):  # kite
  q = (((u > 0.5) ^ (v > 0.45)))[..., None]
  return np.where(q, base, base[::-1])


def _screen_frame(u, v, px, py, base, rng):  # tv frame: flat dark
  return np.broadcast_to(base, u.shape + (3,)).copy()


def _radial(u, v, px, py, base, rng):  # umbrella: radial segments
  ang = np.arctan2(v - 1.0, u - 0.5)
  seg = ((np.floor(ang / (np.pi / 6)) % 2) > 0)[..., None]
  return np.where(seg, base, 240.0)


class ThingStyle(NamedTuple):
  outline: Callable[[np.random.Generator], list[Part]]
  texture: Callable[..., np.ndarray]
  colors: tuple[tuple[int, int, int], ...]  # base colours, one drawn per instance
  accents: tuple[tuple[int, int, int], tuple[int, int, int]]
  size: tuple[float, float]  # instance size range, fraction of min(H, W)


THING_STYLES: dict[int, ThingStyle] = {
    1: ThingStyle(_person, _stripes, ((200, 40, 40), (40, 80, 200), (230, 200, 40), (40, 160, 80)),
                  ((230, 190, 150), (0, 0, 0)), (0.35, 0.6)),
    3: ThingStyle(_car, _gradient, ((180, 20, 20), (20, 40, 160), (200, 200, 210), (30, 30, 30)),
                  ((150, 200, 230), (25, 25, 25)), (0.35, 0.6)),
    13: ThingStyle(_stop_sign, _sign, ((205, 20, 30),), ((150, 150, 150), (0, 0, 0)), (0.25, 0.45)),
    17: ThingStyle(_cat, _tabby, ((140, 140, 140), (210, 140, 60), (60, 60, 60)),
                   ((240, 170, 180), (0, 0, 0)), (0.3, 0.5)),
    18: ThingStyle(_dog, _spots, ((160, 110, 60), (230, 220, 200), (90, 60, 30)),
                   ((70, 40, 20), (0, 0, 0)), (0.35, 0.6)),
    28: ThingStyle(_umbrella, _radial, ((200, 30, 120), (30, 120, 200), (250, 170, 30)),
                   ((50, 40, 30), (0, 0, 0)), (0.35, 0.55)),
    37: ThingStyle(_sports_ball, _checker, ((245, 245, 245), (250, 140, 30)),
                   ((0, 0, 0), (0, 0, 0)), (0.18, 0.35)),
    38: ThingStyle(_kite, _quadrants, ((250, 220, 40), (220, 40, 40), (40, 200, 220)),
                   ((240, 240, 240), (0, 0, 0)), (0.3, 0.5)),
    44: ThingStyle(_bottle, _glass, ((40, 140, 60), (120, 70, 30), (60, 110, 170)),
                   ((235, 225, 190), (30, 30, 30)), (0.3, 0.5)),
    47: ThingStyle(_cup, _band, ((230, 230, 225), (200, 60, 60), (60, 90, 180)),
                   ((180, 180, 175), (0, 0, 0)), (0.22, 0.4)),
    72: ThingStyle(_tv, _screen_frame, ((40, 40, 45), (200, 200, 205)),
                   ((40, 70, 140), (0, 0, 0)), (0.35, 0.6)),
}


def thing_appearance(style: ThingStyle, base: np.ndarray, shape: tuple[int, int], x0: int, y0: int,
                     rng: np.random.Generator) -> np.ndarray:
  """[h, w, 3] float32 texture of an instance over its integer box (origin ``(x0, y0)``)."""
  h, w = shape
  py, px = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
  v, u = (py - y0) / max(h - 1, 1), (px - x0) / max(w - 1, 1)
  return np.asarray(style.texture(u, v, px, py, base.astype(np.float32), rng), dtype=np.float32)


# ---------------------------------------------------------------- stuff textures (full image)

def lowfreq(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
  """[H, W] smooth noise in about 0..1 (a cells x cells random grid, bicubic upsampling)."""
  grid = rng.random((cells, cells)).astype(np.float32)
  return np.clip(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)


def _rgb(*c) -> np.ndarray:
  return np.array(c, dtype=np.float32)


def _sky(rng, yy, xx):
  t = (yy / yy.max())[..., None]
  img = _rgb(80, 140, 215) * (1 - t) + _rgb(175, 210, 240) * t
  cloud = np.clip((lowfreq(rng, yy.shape, 5) - 0.55) * 4, 0, 1)[..., None]
  return img * (1 - cloud) + 245 * cloud


def _grass(rng, yy, xx):
  blades = cv2.resize(rng.random((yy.shape[0] // 6 + 1, yy.shape[1])).astype(np.float32),
                      (yy.shape[1], yy.shape[0]), interpolation=cv2.INTER_LINEAR)
  return _rgb(60, 150, 50) * (0.7 + 0.5 * blades)[..., None]


def _brick(rng, yy, xx):
  row = np.floor(yy / 12)
  col = np.floor((xx + 12 * (row % 2)) / 24)
  shade = ((row * 7 + col * 13) % 5) / 5.0
  mortar = ((yy % 12) < 2) | (((xx + 12 * (row % 2)) % 24) < 2)
  brick = _rgb(150, 60, 45) * (0.8 + 0.3 * shade)[..., None]
  return np.where(mortar[..., None], _rgb(200, 195, 185), brick)


def _road(rng, yy, xx):
  noise = rng.normal(0, 8, yy.shape).astype(np.float32)[..., None]
  dash = ((np.abs(yy - yy.mean()) < 2) & ((xx % 40) < 22))[..., None]
  return np.where(dash, 235.0, _rgb(85, 85, 92) + noise)


def _sea(rng, yy, xx):
  waves = np.sin(xx * 0.25 + 2.5 * np.sin(yy * 0.12))[..., None]
  return _rgb(30, 85, 165) + 25 * waves


def _sand(rng, yy, xx):
  return _rgb(220, 195, 140) + rng.normal(0, 12, yy.shape + (1,)).astype(np.float32)


def _tree(rng, yy, xx):
  n = lowfreq(rng, yy.shape, 14)[..., None]
  return _rgb(25, 70, 25) + n * _rgb(40, 90, 30)


def _snow(rng, yy, xx):
  n = lowfreq(rng, yy.shape, 8)[..., None]
  return _rgb(245, 248, 252) - n * _rgb(30, 20, 5)


def _wood(rng, yy, xx):
  plank = np.floor(yy / 14)
  shade = ((plank * 5) % 4) / 4.0
  grain = np.sin(xx * 0.4 + 3 * np.sin(yy * 0.7 + plank))
  gap = (yy % 14) < 1
  wood = _rgb(160, 105, 60) * (0.8 + 0.25 * shade + 0.06 * grain)[..., None]
  return np.where(gap[..., None], _rgb(70, 45, 25), wood)


def _mountain(rng, yy, xx):
  return _rgb(110, 118, 100) + 30 * np.sin((xx + 1.7 * yy) * 0.09)[..., None]


def _pavement(rng, yy, xx):
  line = ((yy % 20) < 2) | ((xx % 20) < 2)
  return np.where(line[..., None], _rgb(70, 70, 70), _rgb(150, 150, 148))


# stuff COCO id -> texture(rng, yy, xx) over the full image
STUFF_TEXTURES: dict[int, Callable[..., np.ndarray]] = {
    187: _sky, 193: _grass, 171: _brick, 149: _road, 155: _sea, 154: _sand, 184: _tree,
    159: _snow, 118: _wood, 192: _mountain, 191: _pavement,
}


def clip_polygon(poly: np.ndarray, x_max: float, y_max: float) -> np.ndarray:
  """Sutherland-Hodgman clip of a polygon [N, 2] to ``[0, x_max] x [0, y_max]``; [M, 2], M >= 0."""
  def clip(pts, axis, limit, keep_below):
    out = []
    n = len(pts)
    for k in range(n):
      cur, prev = pts[k], pts[k - 1]
      cur_in = cur[axis] <= limit if keep_below else cur[axis] >= limit
      prev_in = prev[axis] <= limit if keep_below else prev[axis] >= limit
      if cur_in != prev_in:
        t = (limit - prev[axis]) / (cur[axis] - prev[axis])
        out.append(prev + t * (cur - prev))
      if cur_in:
        out.append(cur)
    return out

  pts = [p for p in np.asarray(poly, dtype=np.float64)]
  for axis, limit, below in ((0, 0.0, False), (0, x_max, True), (1, 0.0, False), (1, y_max, True)):
    if not pts:
      break
    pts = clip(pts, axis, limit, below)
  return np.array(pts, dtype=np.float64).reshape(-1, 2)
