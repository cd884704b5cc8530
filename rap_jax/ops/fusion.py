"""Panoptic fusion on the device: heuristic, RAP and OCFusion (SPEC §5) as static-shape jnp.

One image's fusion is written once (`_fuse_one`) and mapped over a batch (`lax.map` on CPU,
`jax.vmap` on accelerators). Inputs are in DETECTION order with K static instance slots and a
`valid` mask; the canvas H x W is static (outside the true image: masks False, semantic 0). The
output `FusionResult` has S = K + 53 segment slots, valid ones first in the order the original
appends them to `segments_info`: accepted things by descending score, then stuff by channel.

How the original's sequential loop becomes array code:

* Prologue (SPEC §5 steps 1-2): `keep = not (score < thr)`; a stable descending sort (ties keep
  detection order); the loop runs over the kept instances only.
* The per-pixel state is one int32 map `pan` of thing-segment slots: slot j + 1 is the segment
  created at step j of the sorted loop, 0 = free. The original's other per-pixel arrays are
  functions of the slot (`owner_label = label[pan]`, `owner_rel = relation[pan]`, OCFusion's
  `used = instance[pan] + 1`), so they are kept per slot, not per pixel.
* At step j the instance's pixels are counted by the slot they lie on (`hist[s] = |mask ∧ pan ==
  s|`); every test of the original is a function of `hist`, the instance area (= sum(hist)) and
  the current segment areas: |inter| = area - hist[0]; same-label overlap = sum of hist over
  segments with that label; the duplicate (RAP) and pair (OCFusion) tests run over the segments
  with hist > 0; an accepted instance takes the pixels whose slot s has take[s] (free pixels,
  farther owners for RAP, occluded owners for OCFusion), so |new mask| = sum(hist * take) and the
  segment areas are updated without another pass. Only accepted instances write pixels.
* Sparsity: the canvas is cut into tiles (`tile`, ~64 x 128 on CPU; None = one tile). A step
  visits only the tiles its mask touches (one pass over the kept masks, or none with
  `mask_windows`). A tile is "uniform" while all its pixels hold one slot (all tiles start free):
  counting there is one masked count, and a mask covering it entirely just relabels it; only
  "mixed" tiles need the per-pixel scatter-add. `pan` is stored tile-major ([T, th, tw]) so that
  tiles are contiguous; it is turned row-major once at the end.
* Refinement (RAP, OCFusion): thing segments with zero remaining area are dropped (the heuristic
  has no refinement). Stuff (SPEC §5.4): one histogram of (channel, free) pairs; channel c is
  kept iff present in the map and its free area is >= stuff_area_limit.

Exact comparisons without float64 (jax_enable_x64 off)
------------------------------------------------------
Score: the original tests the float32 score, converted to a Python float, against the float64
threshold t. For a float32 s, `s >= t` iff `s >= c` where c = the smallest float32 >= t (if s >= t
then s is a float32 >= t, so s >= c; conversely s >= c >= t). So `keep = ~(scores < c)` in float32
with c computed on the host (`score_cut`). NaN scores are kept, as `not (nan < t)` is True.

Ratios: the original compares `fl(a / b)` (float64 division of integer pixel counts a >= 0, b > 0)
with a float64 threshold t, by `>`, `>=` or `<=`. Let t+ be the next float64 above t and
m = (t + t+) / 2. Rounding is monotone and a real q > m rounds to a double >= t+ (t+ is nearer
than t and every double <= t), q < m to a double <= t, so `fl(a/b) > t  <=>  a/b > m` unless
a/b == m exactly. That cannot happen: for 0 < t < 4, t = T 2^e with an integer T < 2^53 and
e <= -51, so m = (2T + 1) 2^(e-1) has an odd numerator over 2^(1-e) >= 2^52; a/b == m would need
2^52 | b, and b < 2^24 here. Since a/b > m  <=>  a > m b  <=>  a > floor(m b) (m b is not an
integer for the same reason), the test is the integer comparison `a > floor(m * b)`, with
floor(m b) computed exactly in int32 (`_floor_mul`: m as a 96-bit binary fraction, M = m 2^96,
multiplied by b in base-2^12 limbs with carries). `fl(a/b) >= t` is `fl(a/b) > t-` for the
previous double t-, i.e. the same test with m = (t- + t) / 2 (again an odd multiple of a power of
two <= 2^-52, also when t is a power of two); `fl(a/b) <= t` is `not (> t)`.
All ratios here have a <= b, so t is first clamped to [-1, 2] without changing any result, and
m < 2^-24 gives floor(m b) = 0 (test `a > 0`). tests/test_fusion.py checks every a <= b <= 300,
the best rational approximations of t with b < 2^24 and random pairs near the boundary against
Python's float division.

Relation values are compared in float32 as the original's `used_relation_vals` array is float32
(free pixels hold +inf; ties never transfer pixels).
"""
from __future__ import annotations

import dataclasses
import fractions
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rap_jax.data import categories as cats

METHODS = ("heuristic", "rap", "ocfusion")
NUM_STUFF = cats.NUM_STUFF_CLASSES                 # 53
NUM_CHANNELS = cats.NUM_SEMANTIC_CHANNELS          # 55
MAX_AREA = 1 << 24                                 # pixel counts must stay below (exact int32 math)
DEFAULT_TILE = (64, 128)                           # CPU default; None = one tile (accelerators)


@flax.struct.dataclass
class FusionResult:
  """Fixed-size panoptic fusion output of one image (leading batch axis when batched).

  segment_map: [H, W] int32, 0 = unassigned, s + 1 = segment slot s.
  segment_category: [S] int32 COCO category id (0 for invalid slots), S = K + 53.
  segment_is_thing: [S] bool.
  segment_instance: [S] int32 detection index of a thing segment, -1 for stuff/invalid.
  segment_area: [S] int32 pixel count in segment_map.
  segment_valid: [S] bool; valid slots come first (things by score, then stuff by channel).
  num_segments: [] int32 number of valid slots.
  accepted_category: [K] int32 category of each accepted thing in acceptance order, including
    things later emptied by the refinement: the original drew an IdGenerator id for each of them
    (so `panoptic_io.fusion_to_panoptic` replays ids exactly).
  accepted_segment: [K] int32 its segment slot, -1 if it was emptied.
  accepted_valid: [K] bool.
  """
  segment_map: jax.Array
  segment_category: jax.Array
  segment_is_thing: jax.Array
  segment_instance: jax.Array
  segment_area: jax.Array
  segment_valid: jax.Array
  num_segments: jax.Array
  accepted_category: jax.Array
  accepted_segment: jax.Array
  accepted_valid: jax.Array

  def __getitem__(self, index) -> "FusionResult":
    """Index the leading batch axis: result[i] is image i of a batched result."""
    return jax.tree_util.tree_map(lambda x: x[index], self)


# ----------------------------------------------------------------------------- exact comparisons
_LIMB_BITS = 12
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_FRAC_LIMBS = 8                                    # m is stored as M / 2^96
_FRAC_BITS = _LIMB_BITS * _FRAC_LIMBS


@dataclasses.dataclass(frozen=True)
class RatioBound:
  """Host-side form of one test `fl(a / b) > t` (or `>= t`): `a > floor(m b)`, m = M / 2^96.

  constant: the result when it does not depend on (a, b) (NaN threshold, m < 0), else None.
  limbs: base-2^12 digits of M, least significant first (() when floor(m b) is always 0).
  """
  constant: bool | None
  limbs: tuple[int, ...]


def ratio_bound(thr: float, op: str) -> RatioBound:
  """Exact integer form of `a / b {op} thr` for integers 0 <= a <= b < 2^24, b > 0.

  op: '>' or '>=' (use `not '>'` for '<='). See the module docstring for the proof.
  """
  if op not in (">", ">="):
    raise ValueError(f"op must be '>' or '>=', got {op!r}")
  thr = float(thr)
  if math.isnan(thr):
    return RatioBound(False, ())                     # every comparison with NaN is False
  thr = min(max(thr, -1.0), 2.0)                     # ratios lie in [0, 1]: same results
  other = math.nextafter(thr, math.inf if op == ">" else -math.inf)
  m = (fractions.Fraction(thr) + fractions.Fraction(other)) / 2
  if m < 0:
    return RatioBound(True, ())                      # a / b >= 0 > m
  if m < fractions.Fraction(1, MAX_AREA):
    return RatioBound(None, ())                      # floor(m b) = 0 for b < 2^24: a > 0
  scaled = m * (1 << _FRAC_BITS)
  if scaled.denominator != 1:                        # cannot happen for m >= 2^-24
    raise AssertionError(f"threshold {thr!r}: midpoint not representable in {_FRAC_BITS} bits")
  big, limbs = int(scaled), []
  while big:
    limbs.append(big & _LIMB_MASK)
    big >>= _LIMB_BITS
  return RatioBound(None, tuple(limbs))


def _floor_mul(b: jax.Array, limbs: tuple[int, ...]) -> jax.Array:
  """floor(M b / 2^96) exactly in int32, for int32 b in [0, 2^24) and M < 2^98 (base-2^12 limbs).

  Long multiplication: b = b1 2^12 + b0; column k of M b is c_k = d_k b0 + d_(k-1) b1 < 2^25;
  carries propagate upwards; columns >= 8 form the integer part (< 2^26).
  """
  b0 = b & _LIMB_MASK
  b1 = b >> _LIMB_BITS
  n = len(limbs)
  carry = jnp.zeros_like(b)
  out = jnp.zeros_like(b)
  for k in range(n + 1):
    col = carry
    if k < n and limbs[k]:
      col = col + limbs[k] * b0
    if 1 <= k <= n and limbs[k - 1]:
      col = col + limbs[k - 1] * b1
    if k >= _FRAC_LIMBS:
      out = out + ((col & _LIMB_MASK) << (_LIMB_BITS * (k - _FRAC_LIMBS)))
    carry = col >> _LIMB_BITS
  shift = _LIMB_BITS * (n + 1 - _FRAC_LIMBS)
  if shift >= 0:
    out = out + (carry << shift)
  return out


def ratio_exceeds(num: jax.Array, den: jax.Array, bound: RatioBound) -> jax.Array:
  """`fl(num / den) > t` (or `>= t`, as built by `ratio_bound`), exactly; int32 inputs, den > 0.

  num, den: int32 arrays (broadcastable), 0 <= num <= den < 2^24. Result for den == 0 is
  meaningless (callers mask it).
  """
  num = jnp.asarray(num, jnp.int32)
  den = jnp.asarray(den, jnp.int32)
  if bound.constant is not None:
    return jnp.full(jnp.broadcast_shapes(num.shape, den.shape), bound.constant)
  if not bound.limbs:
    return jnp.broadcast_to(num > 0, jnp.broadcast_shapes(num.shape, den.shape))
  return num > _floor_mul(den, bound.limbs)


def score_cut(thr: float) -> np.float32:
  """The smallest float32 c >= thr: for float32 s, `s >= thr` (float64) iff `s >= c`."""
  thr = float(thr)
  if math.isnan(thr):
    return np.float32(np.nan)
  with np.errstate(over="ignore"):
    c = np.float32(thr)
  if float(c) < thr:
    c = np.nextafter(c, np.float32(np.inf))
  return np.float32(c)


# ----------------------------------------------------------------------------- static settings
@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Static (hashable) fusion settings; mirrors config.fusion (SPEC §1.1 defaults)."""
  method: str = "heuristic"
  confidence_thr: float = 0.5
  overlap_thr: float = 0.5
  large_overlap_thr: float = 0.5
  stuff_area_limit: float = 4096
  oc_pair_overlap_thr: float = 0.2
  tile: tuple[int, int] | None = DEFAULT_TILE

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown fusion method {self.method!r}; expected one of {METHODS}")
    if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
      raise ValueError(f"tile must be None or (tile_h, tile_w) >= 1, got {self.tile}")

  @classmethod
  def from_config(cls, fusion: Any, **overrides) -> "FusionConfig":
    """From `config.fusion` (an ml_collections dict with the same keys)."""
    keys = [f.name for f in dataclasses.fields(cls)]
    values = {k: fusion[k] for k in keys if k in fusion}
    if "tile" in values and values["tile"] is not None:
      values["tile"] = tuple(values["tile"])
    values.update(overrides)
    return cls(**values)


def _pick_tile_dim(size: int, target: int) -> int:
  """The divisor of `size` nearest to `target` (log scale); `size` itself if none is close."""
  divisors = [d for d in range(1, size + 1) if size % d == 0]
  return min(divisors, key=lambda d: (abs(math.log(d / target)), -d))


def tile_shape(height: int, width: int, tile: tuple[int, int] | None) -> tuple[int, int]:
  """The tile actually used on an H x W canvas (dims divide the canvas)."""
  if tile is None:
    return height, width
  return _pick_tile_dim(height, tile[0]), _pick_tile_dim(width, tile[1])


# ----------------------------------------------------------------------------- one image
def _tile_occupancy(masks: jax.Array, tile: tuple[int, int]) -> jax.Array:
  """[..., H, W] bool -> [..., T] bool: does the mask touch tile t (raster order)?

  OR over the rows of a tile first: vectorised along W on XLA:CPU, unlike reductions that
  convert bools to integers (~30x slower there).
  """
  *lead, height, width = masks.shape
  th, tw = tile
  rows_any = masks.reshape(*lead, height // th, th, width).any(axis=-2)     # [..., nty, W]
  tiles = rows_any.reshape(*lead, height // th, width // tw, tw).any(axis=-1)
  return tiles.reshape(*lead, (height // th) * (width // tw))


def _fuse_one(all_masks: jax.Array, image: jax.Array, scores: jax.Array, labels: jax.Array,
              relation: jax.Array, occlusion: jax.Array, valid: jax.Array, semantic: jax.Array,
              windows: jax.Array | None, cfg: FusionConfig) -> FusionResult:
  """Fusion of image `image` of `all_masks` [B, K, H, W]; other arrays of that image only.

  The masks stay in the batched array and are read in place (a per-image slice would copy
  K x H x W bytes); only the masks of instances that pass the score threshold are read. Other
  shapes as in `fuse` without the batch axis; windows: [K, 4] int32 or None (see `fuse`).
  """
  num_inst, height, width = all_masks.shape[1:]
  if height * width >= MAX_AREA:
    raise ValueError(f"canvas {height}x{width} has >= 2^24 pixels (exact int32 counts need less)")
  th, tw = tile_shape(height, width, cfg.tile)
  nty, ntx = height // th, width // tw
  num_tiles = nty * ntx
  num_slots = num_inst + 1                          # slot 0 = free, slot j + 1 = step j
  method = cfg.method

  gt_overlap = ratio_bound(cfg.overlap_thr, ">")
  ge_large = ratio_bound(cfg.large_overlap_thr, ">=")
  ge_pair = ratio_bound(cfg.oc_pair_overlap_thr, ">=")

  scores = scores.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  relation = relation.astype(jnp.float32)
  valid = valid.astype(bool)

  # ---- prologue (SPEC §5 steps 1-2)
  keep = valid & ~(scores < score_cut(cfg.confidence_thr))                  # [K]
  # stable: kept first, then descending score, ties in detection order
  order = jnp.lexsort((-scores, ~keep)).astype(jnp.int32)                  # [K]

  masks6 = all_masks.reshape(-1, num_inst, nty, th, ntx, tw)

  def mask_tile(inst, t):
    ty, tx = t // ntx, t % ntx
    return jax.lax.dynamic_slice(masks6, (image, inst, ty, 0, tx, 0),
                                 (1, 1, 1, th, 1, tw)).reshape(th, tw)

  # The slot map is kept tile-major, [T, th, tw]: a tile is contiguous, which makes its slices
  # and updates plain copies (a strided tile is first gathered into a buffer by XLA:CPU).
  def pan_tile(pan, t):
    return jax.lax.dynamic_index_in_dim(pan, t, keepdims=False)                # [th, tw]

  def set_pan_tile(pan, t, value):
    return jax.lax.dynamic_update_slice(pan, value[None], (t, 0, 0))

  tile_px = th * tw

  # Which tiles each kept instance touches, in score order: one pass over the kept masks only
  # (a dynamic slice per mask, fused into the reduction: no copy).
  num_kept = keep.sum(dtype=jnp.int32)

  def occupancy_row(j, table):
    mask = jax.lax.dynamic_slice(all_masks, (image, order[j], 0, 0), (1, 1, height, width))
    return table.at[j].set(_tile_occupancy(mask.reshape(height, width), (th, tw)))

  if windows is None:
    occupancy = jax.lax.fori_loop(0, num_kept, occupancy_row,
                                  jnp.zeros((num_inst, num_tiles), bool))       # [K, T]
  else:                                    # every tile that meets the window, no mask read
    y0, x0, y1, x1 = jnp.moveaxis(windows.astype(jnp.int32)[order], 1, 0)      # [K] each
    y0, y1 = jnp.clip(y0, 0, height), jnp.clip(y1, 0, height)
    x0, x1 = jnp.clip(x0, 0, width), jnp.clip(x1, 0, width)
    ty = jnp.arange(num_tiles) // ntx
    tx = jnp.arange(num_tiles) % ntx
    occupancy = ((ty[None] * th < y1[:, None]) & ((ty[None] + 1) * th > y0[:, None])
                 & (tx[None] * tw < x1[:, None]) & ((tx[None] + 1) * tw > x0[:, None]))

  # per step j: its occupied tiles first (raster order), and their number
  tile_list = jnp.argsort(~occupancy, axis=1, stable=True).astype(jnp.int32)     # [K, T]
  num_occupied = occupancy.sum(axis=1, dtype=jnp.int32)                          # [K]

  def count(pan, owner, inst, tiles, n):
    """Pixels of the instance's mask per slot, over its first n occupied tiles.

    Returns hist [K+1] (hist[s] = |mask ∧ pan == s|; heuristic: [free, used, 0, ...]) and
    full [T] bool (visited uniform tiles that the mask covers entirely). A uniform tile
    (owner >= 0) costs one masked count credited to its owner, a mixed one a scatter-add over
    its slots (the cond only carries the small histogram, so no branch copies the slot map).
    """
    def body(k, carry):
      hist, full = carry
      t = tiles[k]
      m = mask_tile(inst, t)                                          # [th, tw]
      o = owner[t]

      def uniform(hist):
        c = jnp.sum(m, dtype=jnp.int32)
        return hist.at[jnp.minimum(o, 1) if method == "heuristic" else o].add(c), c

      def mixed(hist):
        p = pan_tile(pan, t)                                          # [th, tw]
        if method == "heuristic":                                     # free / used only
          used = jnp.sum(m & (p > 0), dtype=jnp.int32)
          return hist.at[0].add(jnp.sum(m, dtype=jnp.int32) - used).at[1].add(used), 0
        return hist.at[p].add(m.astype(jnp.int32)), 0

      hist, c = jax.lax.cond(o >= 0, uniform, mixed, hist)
      return hist, full.at[t].set(c == tile_px)

    carry = (jnp.zeros(num_slots, jnp.int32), jnp.zeros(num_tiles, bool))
    return jax.lax.fori_loop(0, n, body, carry)

  def write(pan, owner, inst, tiles, n, take, slot, full):
    """pan[mask ∧ take[pan]] = slot over the instance's first n occupied tiles.

    Every visited tile is written (a uniform tile is materialised first); afterwards a tile is
    uniform if it was and kept its owner, or if the mask covered it all and took its owner.
    """
    def body(k, pan):
      t = tiles[k]
      m = mask_tile(inst, t)
      o = owner[t]
      base = jnp.where(o >= 0, o, pan_tile(pan, t))                   # [th, tw] current slots
      grab = m & take[base]
      return set_pan_tile(pan, t, jnp.where(grab, slot, base))

    live = jnp.arange(num_tiles) < n
    owner_of = owner[tiles]
    taken = take[jnp.maximum(owner_of, 0)]
    relabel = (owner_of >= 0) & taken & full[tiles]
    keeps = (owner_of >= 0) & ~taken
    new_owner = jnp.where(relabel, slot, jnp.where(keeps, owner_of, -1))
    owner = owner.at[tiles].set(jnp.where(live, new_owner, owner_of))
    return jax.lax.fori_loop(0, n, body, pan), owner

  # Per-slot facts fixed by the score order: slot j + 1 belongs to instance order[j] (used only
  # where the slot holds pixels, i.e. once its step accepted the instance); slot 0 = free.
  slots = jnp.arange(num_slots)
  seg_inst = jnp.concatenate([jnp.full(1, -1, jnp.int32), order])              # [K+1]
  seg_label = jnp.concatenate([jnp.zeros(1, jnp.int32), labels[order]])       # [K+1]
  seg_rel = jnp.concatenate([jnp.full(1, jnp.inf, jnp.float32), relation[order]])

  def step(j, state):
    pan, owner, seg_area, seg_accepted = state
    inst = order[j]
    tiles, n = tile_list[j], num_occupied[j]         # [T], []
    hist, full = count(pan, owner, inst, tiles, n)   # [K+1], [T]
    a = jnp.sum(hist)                                # the mask's area
    active = a > 0                                   # "if area == 0: continue"
    a_safe = jnp.maximum(a, 1)
    exists = (slots > 0) & (hist > 0)                # segments the instance overlaps
    if method == "heuristic":                        # SPEC §5.1
      inter = hist[1]
      accept = active & ~ratio_exceeds(inter, a_safe, gt_overlap)
      take = slots == 0                              # only free pixels
      new_area = a - inter
    elif method == "rap":                            # SPEC §5.2
      inter = a - hist[0]
      same = jnp.sum(jnp.where(exists & (seg_label == labels[inst]), hist, 0))
      skip_same = ratio_exceeds(same, a_safe, gt_overlap)
      duplicate = jnp.any(exists
                          & ratio_exceeds(hist, a_safe, ge_large)
                          & ratio_exceeds(hist, jnp.maximum(seg_area, 1), ge_large))
      # strict float32 '>': slot 0 holds +inf; with no intersection the full mask is kept
      take = (seg_rel > relation[inst]) | ((slots == 0) & (inter == 0))
      new_area = jnp.sum(jnp.where(take, hist, 0))
      skip_share = ~ratio_exceeds(new_area, a_safe, gt_overlap)
      accept = active & ~skip_same & ~duplicate & ~skip_share
    else:                                            # SPEC §5.3
      inter = a - hist[0]
      big = (ratio_exceeds(hist, a_safe, ge_pair)
             | ratio_exceeds(hist, jnp.maximum(seg_area, 1), ge_pair))
      in_front = occlusion[inst, jnp.maximum(seg_inst, 0)]
      take = (slots == 0) | (exists & big & in_front)
      new_area = jnp.sum(jnp.where(take, hist, 0))
      skip_share = (inter > 0) & ~ratio_exceeds(new_area, a_safe, gt_overlap)
      accept = active & ~skip_share
    slot = j + 1
    pan, owner = write(pan, owner, inst, tiles, jnp.where(accept, n, 0), take, slot, full)
    taken = jnp.where(accept & take & (slots > 0), hist, 0)
    seg_area = jnp.where(slots == slot, jnp.where(accept, new_area, 0), seg_area - taken)
    seg_accepted = seg_accepted | ((slots == slot) & accept)
    return pan, owner, seg_area, seg_accepted

  state = (jnp.zeros((num_tiles, th, tw), jnp.int32),         # pan (slots), tile-major
           jnp.zeros(num_tiles, jnp.int32),                    # owner: all tiles free
           jnp.zeros(num_slots, jnp.int32),                    # seg_area: current pixel counts
           jnp.zeros(num_slots, bool))                         # seg_accepted
  pan, owner, seg_area, seg_accepted = jax.lax.fori_loop(
      0, num_kept, step, state)                      # kept instances come first in `order`
  # Materialise the uniform tiles owned by a segment (tiles still owned by 0 were never
  # written and hold the initial zeros), then back to row-major.
  relabelled = owner > 0
  relabelled_idx = jnp.where(relabelled, jnp.cumsum(relabelled) - 1, num_tiles)
  relabelled_idx = jnp.zeros(num_tiles, jnp.int32).at[relabelled_idx].set(
      jnp.arange(num_tiles, dtype=jnp.int32), mode="drop")           # their ids, first

  def materialise(k, pan):
    t = relabelled_idx[k]
    return set_pan_tile(pan, t, jnp.full((th, tw), owner[t], jnp.int32))

  pan = jax.lax.fori_loop(0, relabelled.sum(dtype=jnp.int32), materialise, pan)
  pan = pan.reshape(nty, ntx, th, tw).transpose(0, 2, 1, 3).reshape(height, width)
  # materialise the row-major map once (fused into the gathers below, the strided transpose
  # reads cost ~4x more on XLA:CPU)
  pan = jax.lax.optimization_barrier(pan)

  # ---- refinement + stuff stage (SPEC §5.2 end, §5.4)
  thing_ok = seg_accepted[1:]                                   # [K] in step order
  if method != "heuristic":
    thing_ok = thing_ok & (seg_area[1:] > 0)
  sem = semantic.astype(jnp.int32)
  sem = jnp.where((sem >= 0) & (sem < NUM_CHANNELS), sem, 0)
  pair = sem * 2 + (pan == 0).astype(jnp.int32)                 # [H, W]
  pair_count = jnp.zeros(2 * NUM_CHANNELS, jnp.int32).at[pair.ravel()].add(1)
  pair_count = pair_count.reshape(NUM_CHANNELS, 2)
  present = (pair_count.sum(1) > 0)[1:NUM_STUFF + 1]            # [53] candidates exist
  left = pair_count[1:NUM_STUFF + 1, 1]                          # [53] free pixels
  # left < limit skips: for integer counts, keep iff left >= ceil(limit) (clamped to int32)
  min_left = int(min(max(math.ceil(cfg.stuff_area_limit), -2 ** 31), 2 ** 31 - 1))
  stuff_ok = present & (left >= min_left)

  ok = jnp.concatenate([thing_ok, stuff_ok])                     # [S] raw slot order
  num_seg = num_inst + NUM_STUFF
  position = jnp.cumsum(ok) - 1
  dest = jnp.where(ok, position, num_seg)                        # out of range = dropped
  stuff_category = jnp.asarray(cats.SEMANTIC_TO_COCO[1:NUM_STUFF + 1])        # [53]
  raw_category = jnp.concatenate([seg_label[1:], stuff_category])
  raw_instance = jnp.concatenate([seg_inst[1:], jnp.full(NUM_STUFF, -1, jnp.int32)])
  raw_area = jnp.concatenate([seg_area[1:], left])
  raw_thing = jnp.arange(num_seg) < num_inst

  def compact(values, fill):
    return jnp.full(num_seg, fill, values.dtype).at[dest].set(values, mode="drop")

  # pixel map: thing slot -> final index + 1; stuff channel -> final index + 1 (0 if dropped)
  thing_lut = jnp.concatenate([jnp.zeros(1, jnp.int32),
                               jnp.where(thing_ok, position[:num_inst] + 1, 0)])
  stuff_lut = jnp.zeros(NUM_CHANNELS, jnp.int32).at[1:NUM_STUFF + 1].set(
      jnp.where(stuff_ok, position[num_inst:] + 1, 0))
  # one gather: thing slots index the first K + 1 entries, free pixels their channel's entry
  lut = jnp.concatenate([thing_lut, stuff_lut])                        # [K + 1 + 55]
  segment_map = lut[jnp.where(pan > 0, pan, num_slots + sem)]          # [H, W]

  accepted = seg_accepted[1:]
  acc_dest = jnp.where(accepted, jnp.cumsum(accepted) - 1, num_inst)
  return FusionResult(
      segment_map=segment_map.astype(jnp.int32),
      segment_category=compact(raw_category.astype(jnp.int32), 0),
      segment_is_thing=compact(raw_thing, False),
      segment_instance=compact(raw_instance, -1),
      segment_area=compact(raw_area.astype(jnp.int32), 0),
      segment_valid=compact(ok, False),
      num_segments=ok.sum(dtype=jnp.int32),
      accepted_category=jnp.zeros(num_inst, jnp.int32).at[acc_dest].set(seg_label[1:], mode="drop"),
      accepted_segment=jnp.full(num_inst, -1, jnp.int32).at[acc_dest].set(
          jnp.where(thing_ok, position[:num_inst], -1), mode="drop"),
      accepted_valid=jnp.arange(num_inst) < accepted.sum())


# ----------------------------------------------------------------------------- public API
def default_tile() -> tuple[int, int] | None:
  """DEFAULT_TILE on CPU (sparse per-instance passes), None (one tile) on accelerators."""
  return DEFAULT_TILE if jax.default_backend() == "cpu" else None


def default_batch_mode() -> str:
  """'map' (images one after the other inside the jit) on CPU, 'vmap' elsewhere.

  The per-instance loops have data-dependent trip counts; vmapped, every image pays for the
  longest one and tile slices become gathers, which costs more than it gains on CPU.
  """
  return "map" if jax.default_backend() == "cpu" else "vmap"


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fuse_one_jit(masks, scores, labels, relation, occlusion, valid, semantic, windows, *, cfg):
  return _fuse_one(masks[None], 0, scores, labels, relation, occlusion, valid, semantic, windows,
                   cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_mode"))
def _fuse_batched_jit(masks, scores, labels, relation, occlusion, valid, semantic, windows, *,
                      cfg, batch_mode):
  # the masks are closed over, not mapped: each image reads its own slices in place
  one = functools.partial(_fuse_one, masks, cfg=cfg)
  index = jnp.arange(masks.shape[0])
  args = (index, scores, labels, relation, occlusion, valid, semantic, windows)
  if batch_mode == "vmap":
    return jax.vmap(one)(*args)
  return jax.lax.map(lambda a: one(*a), args)


def _check_shapes(masks, scores, labels, relation, occlusion, valid, semantic, windows,
                  batched: bool) -> None:
  lead = 1 if batched else 0
  if masks.ndim != 3 + lead:
    raise ValueError(f"masks must be [{'B, ' if batched else ''}K, H, W], got shape "
                     f"{tuple(masks.shape)}")
  k, hw = masks.shape[lead], tuple(masks.shape[lead + 1:])
  for name, x, shape in (("scores", scores, (k,)), ("labels", labels, (k,)),
                         ("relation", relation, (k,)), ("occlusion", occlusion, (k, k)),
                         ("valid", valid, (k,)), ("semantic", semantic, hw),
                         ("mask_windows", windows, (k, 4))):
    if x is None:
      continue
    expected = tuple(masks.shape[:1]) * lead + shape
    if tuple(x.shape) != expected:
      raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {expected} "
                       f"(masks: {tuple(masks.shape)})")


def fuse_with_settings(cfg: FusionConfig, masks, scores, labels, semantic, *, valid=None,
                       relation=None, occlusion=None, mask_windows=None, batched: bool = False,
                       batch_mode: str | None = None) -> FusionResult:
  """`fuse` with a prepared `FusionConfig` (see `fuse` for the arrays)."""
  if cfg.method == "rap" and relation is None:
    raise ValueError("fusion method 'rap' needs relation values")
  if cfg.method == "ocfusion" and occlusion is None:
    raise ValueError("fusion method 'ocfusion' needs the occlusion matrix")
  masks = jnp.asarray(masks)
  if masks.dtype != jnp.bool_:
    raise ValueError(f"masks must be bool, got {masks.dtype}")
  lead = masks.shape[:1] if batched else ()
  k = masks.shape[len(lead)] if masks.ndim > len(lead) else 0
  relation = jnp.zeros(lead + (k,), jnp.float32) if relation is None else jnp.asarray(relation)
  occlusion = jnp.zeros(lead + (k, k), bool) if occlusion is None else jnp.asarray(occlusion)
  valid = jnp.ones(lead + (k,), bool) if valid is None else jnp.asarray(valid)
  scores, labels, semantic = (jnp.asarray(x) for x in (scores, labels, semantic))
  windows = None if mask_windows is None else jnp.asarray(mask_windows)
  if windows is not None and not jnp.issubdtype(windows.dtype, jnp.integer):
    raise ValueError(f"mask_windows must be integer pixel bounds, got {windows.dtype}")
  _check_shapes(masks, scores, labels, relation, occlusion, valid, semantic, windows, batched)
  args = (masks, scores, labels, relation, occlusion.astype(bool), valid, semantic, windows)
  if batched:
    mode = batch_mode or default_batch_mode()
    if mode not in ("vmap", "map"):
      raise ValueError(f"batch_mode must be 'vmap' or 'map', got {mode!r}")
    return _fuse_batched_jit(*args, cfg=cfg, batch_mode=mode)
  return _fuse_one_jit(*args, cfg=cfg)


def fuse(method: str, masks: jax.Array, scores: jax.Array, labels: jax.Array,
         semantic: jax.Array, *, valid: jax.Array | None = None,
         relation: jax.Array | None = None, occlusion: jax.Array | None = None,
         mask_windows: jax.Array | None = None, confidence_thr: float = 0.5,
         overlap_thr: float = 0.5, large_overlap_thr: float = 0.5,
         stuff_area_limit: float = 4096, oc_pair_overlap_thr: float = 0.2,
         tile: tuple[int, int] | None | str = "auto", batched: bool = False,
         batch_mode: str | None = None) -> FusionResult:
  """Panoptic fusion of one image (or a batch with `batched=True`), jitted per static settings.

  method: 'heuristic' | 'rap' | 'ocfusion' (config.fusion.method).
  masks: [K, H, W] bool instance masks pasted on the canvas, DETECTION order.
  scores: [K] float32; labels: [K] int32 COCO category ids.
  semantic: [H, W] int32 semantic channels 0..54 (0 void, 54 thing; 0 outside the image).
  valid: [K] bool, False for padding slots (default all True).
  relation: [K] float32 RAP relation values (smaller = nearer); required for 'rap'.
  occlusion: [K, K] bool OCFusion matrix [instance being added, placed instance] in detection
    order; required for 'ocfusion'.
  mask_windows: optional [K, 4] int (y0, x0, y1, x1), half-open pixel bounds that contain every
    True pixel of masks[k] (the paste window of the mask; empty if y1 <= y0 or x1 <= x0). Saves
    the pass over the masks that finds their tiles. A mask pixel outside its window is a caller
    bug and gives wrong results.
  Thresholds: static Python numbers (defaults = the original's defaults, SPEC §1.1).
  tile: canvas tile of the sparse per-instance passes, None = the whole canvas, 'auto' =
    `default_tile()`. Results never depend on it.
  batched: every array has a leading batch axis B; batch_mode 'vmap' | 'map' | None (auto).
  Returns a FusionResult (batched: every field has the leading axis; `result[i]` is image i).
  """
  cfg = FusionConfig(method=method, confidence_thr=float(confidence_thr),
                     overlap_thr=float(overlap_thr), large_overlap_thr=float(large_overlap_thr),
                     stuff_area_limit=stuff_area_limit,
                     oc_pair_overlap_thr=float(oc_pair_overlap_thr),
                     tile=default_tile() if tile == "auto" else
                     (None if tile is None else tuple(tile)))
  return fuse_with_settings(cfg, masks, scores, labels, semantic, valid=valid, relation=relation,
                            occlusion=occlusion, mask_windows=mask_windows, batched=batched,
                            batch_mode=batch_mode)


def fuse_heuristic(masks, scores, labels, semantic, **kwargs) -> FusionResult:
  """Panoptic FPN heuristic (SPEC §5.1); keyword arguments as in `fuse`."""
  return fuse("heuristic", masks, scores, labels, semantic, **kwargs)


def fuse_rap(masks, scores, labels, relation, semantic, **kwargs) -> FusionResult:
  """RAP fusion (SPEC §5.2); keyword arguments as in `fuse`."""
  return fuse("rap", masks, scores, labels, semantic, relation=relation, **kwargs)


def fuse_ocfusion(masks, scores, labels, occlusion, semantic, **kwargs) -> FusionResult:
  """OCFusion fusion (SPEC §5.3); keyword arguments as in `fuse`."""
  return fuse("ocfusion", masks, scores, labels, semantic, occlusion=occlusion, **kwargs)


def fuse_with_config(fusion_config: Any, masks, scores, labels, semantic, *, valid=None,
                     relation=None, occlusion=None, mask_windows=None, batched: bool = True,
                     batch_mode: str | None = None, **overrides) -> FusionResult:
  """`fuse` driven by `config.fusion` (method + thresholds); batched by default (predict mode).

  The tile is `default_tile()` unless config.fusion has a `tile` key or `tile=` is given.
  """
  overrides.setdefault("tile", default_tile())
  cfg = FusionConfig.from_config(fusion_config, **overrides)
  return fuse_with_settings(cfg, masks, scores, labels, semantic, valid=valid,
                            relation=relation, occlusion=occlusion, mask_windows=mask_windows,
                            batched=batched, batch_mode=batch_mode)
