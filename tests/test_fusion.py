"""Panoptic fusion: jitted (rap_jax.ops.fusion) vs reference loops vs the original's outputs.

SPEC §5. The fixtures hold the fusion inputs the original used and the PNG/JSON it wrote
(fixtures/README.md "Per-image RAP dumps", "Per-image OCFusion dumps", "Panoptic outputs").
"""
from __future__ import annotations

import ast
import fractions
import json
import math
import pathlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rap_jax import panoptic_io
from rap_jax.data import categories as cats
from rap_jax.ops import fusion as fusion_ops
from rap_jax.reference import fusion as fusion_ref

METHODS = ("heuristic", "rap", "ocfusion")
IMAGES = ("astronaut", "coffee")
# the fixture runs: RAP config 0.6 / 0.6 for RAP and heuristic, OCFusion config 0.5 / 0.5
FIXTURE_THRESHOLDS = {"rap": (0.6, 0.6), "heuristic": (0.6, 0.6), "ocfusion": (0.5, 0.5)}
CANVAS = (512, 600)        # both fixture images padded into one canvas, as predict mode does
K_FIXTURE = 73


# ----------------------------------------------------------------------------- helpers
def as_segments(result) -> tuple[np.ndarray, list[tuple[int, bool, int]], np.ndarray]:
  """FusionResult of one image -> (segment_map, [(category, is_thing, instance)], areas)."""
  n = int(result.num_segments)
  valid = np.asarray(result.segment_valid)
  assert valid[:n].all() and not valid[n:].any()
  segs = list(zip(np.asarray(result.segment_category[:n]).tolist(),
                  np.asarray(result.segment_is_thing[:n]).tolist(),
                  np.asarray(result.segment_instance[:n]).tolist()))
  return np.asarray(result.segment_map), segs, np.asarray(result.segment_area[:n])


def reference_segments(ref: fusion_ref.ReferenceResult):
  segs = [(s["category_id"], s["isthing"], s["instance"]) for s in ref.segments_info]
  seg_map = ref.segment_map()
  areas = np.bincount(seg_map.ravel(), minlength=len(segs) + 1)[1:]
  return seg_map, segs, areas


def assert_same(result, ref: fusion_ref.ReferenceResult, draws: list[int] | None = None,
                context: str = "") -> None:
  """Exact agreement of a jitted result with a reference result (and of the id draw order)."""
  got_map, got_segs, got_area = as_segments(result)
  ref_map, ref_segs, ref_area = reference_segments(ref)
  assert got_segs == ref_segs, context
  np.testing.assert_array_equal(got_map[:ref_map.shape[0], :ref_map.shape[1]], ref_map,
                                err_msg=context)
  assert not got_map[ref_map.shape[0]:].any() and not got_map[:, ref_map.shape[1]:].any()
  np.testing.assert_array_equal(got_area, ref_area, err_msg=context)
  if draws is not None:      # ids drawn by the reference, in order: category per draw
    n_acc = int(np.asarray(result.accepted_valid).sum())
    n_things = sum(1 for s in ref_segs if s[1])
    got_draws = np.asarray(result.accepted_category[:n_acc]).tolist()
    got_draws += [c for c, thing, _ in got_segs if not thing]
    assert got_draws == draws, context
    # accepted_segment: which draws survived the refinement, and where they went
    survived = {s["id"]: k for k, s in enumerate(ref.segments_info)}
    expected = [survived.get(d + 1, -1) for d in range(n_acc)]
    assert np.asarray(result.accepted_segment[:n_acc]).tolist() == expected, context
    assert len(draws) - n_acc == len(ref_segs) - n_things, context


def run_reference(method, case, cfg: dict):
  draws = []

  def new_id(category_id):
    draws.append(category_id)
    return len(draws)

  ref = fusion_ref.fuse_reference(
      method, case["masks"], case["scores"], case["labels"], case["semantic"],
      relation=case["relation"], occlusion=case["occlusion"], valid=case["valid"],
      new_id=new_id, **cfg)
  return ref, draws


# ----------------------------------------------------------------------------- fixtures
def _load_fixture(fixtures_dir: pathlib.Path, image: str) -> dict:
  rap = np.load(fixtures_dir / f"rap_small_{image}.npz")
  oc = np.load(fixtures_dir / f"ocfusion_small_{image}.npz")
  np.testing.assert_array_equal(oc["fusion_ids"], np.arange(1, len(oc["fusion_ids"]) + 1))
  return dict(masks=rap["masks_pasted"], scores=rap["fusion_scores"],
              labels=rap["fusion_labels_json"], relation=rap["fusion_relation_vals"],
              occlusion=oc["occlusion_vals"].astype(bool),
              semantic=rap["semantic_seg"].astype(np.int32),
              hw=tuple(int(v) for v in rap["image_size_original"]))


@pytest.fixture(scope="module")
def fixture_inputs(fixtures_dir) -> dict[str, dict]:
  return {image: _load_fixture(fixtures_dir, image) for image in IMAGES}


@pytest.fixture(scope="module")
def fixture_batch(fixture_inputs) -> dict:
  """Both images padded into one [2, 73, 512, 600] canvas with `valid` masks."""
  n = len(IMAGES)
  batch = dict(masks=np.zeros((n, K_FIXTURE) + CANVAS, bool),
               scores=np.zeros((n, K_FIXTURE), np.float32),
               labels=np.zeros((n, K_FIXTURE), np.int32),
               relation=np.zeros((n, K_FIXTURE), np.float32),
               occlusion=np.zeros((n, K_FIXTURE, K_FIXTURE), bool),
               valid=np.zeros((n, K_FIXTURE), bool),
               semantic=np.zeros((n,) + CANVAS, np.int32))
  for b, image in enumerate(IMAGES):
    x = fixture_inputs[image]
    k, (h, w) = len(x["scores"]), x["hw"]
    batch["masks"][b, :k, :h, :w] = x["masks"]
    batch["scores"][b, :k] = x["scores"]         # float64 holding float32 values: exact
    batch["labels"][b, :k] = x["labels"]
    batch["relation"][b, :k] = x["relation"]
    batch["occlusion"][b, :k, :k] = x["occlusion"]
    batch["valid"][b, :k] = True
    batch["semantic"][b, :h, :w] = x["semantic"]
  return batch


@pytest.fixture(scope="module")
def fixture_results(fixture_batch) -> dict[str, fusion_ops.FusionResult]:
  out = {}
  for method in METHODS:
    conf, overlap = FIXTURE_THRESHOLDS[method]
    result = fusion_ops.fuse(
        method, fixture_batch["masks"], fixture_batch["scores"], fixture_batch["labels"],
        fixture_batch["semantic"], valid=fixture_batch["valid"],
        relation=fixture_batch["relation"], occlusion=fixture_batch["occlusion"],
        confidence_thr=conf, overlap_thr=overlap, stuff_area_limit=4096, batched=True)
    out[method] = jax.device_get(result)
  return out


def _original(fixtures_dir, method: str, index: int, image: str):
  """The original's segments as (slot map, [category ids], [ids]) in segments_info order."""
  ann = json.loads((fixtures_dir / f"panoptic_{method}.json").read_text())["annotations"][index]
  assert ann["file_name"] == f"{image}.png" and ann["image_id"] == index + 1
  ids = panoptic_io.read_panoptic_png(fixtures_dir / f"panoptic_{method}_{image}.png")
  seg_map = np.zeros(ids.shape, np.int32)
  for k, s in enumerate(ann["segments_info"]):
    seg_map[ids == s["id"]] = k + 1
  assert np.count_nonzero(seg_map) == np.count_nonzero(ids)
  return seg_map, [s["category_id"] for s in ann["segments_info"]], ann, ids


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("index,image", list(enumerate(IMAGES)))
def test_fixture_reference_matches_original(fixtures_dir, fixture_inputs, method, index, image):
  x = fixture_inputs[image]
  conf, overlap = FIXTURE_THRESHOLDS[method]
  ref = fusion_ref.fuse_reference(method, x["masks"], x["scores"], x["labels"], x["semantic"],
                                  relation=x["relation"], occlusion=x["occlusion"],
                                  confidence_thr=conf, overlap_thr=overlap)
  seg_map, categories, _, _ = _original(fixtures_dir, method, index, image)
  assert [s["category_id"] for s in ref.segments_info] == categories
  np.testing.assert_array_equal(ref.segment_map(), seg_map)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("index,image", list(enumerate(IMAGES)))
def test_fixture_jitted_matches_original(fixtures_dir, fixture_results, fixture_inputs, method,
                                         index, image):
  got_map, got_segs, got_area = as_segments(fixture_results[method][index])
  seg_map, categories, _, _ = _original(fixtures_dir, method, index, image)
  h, w = fixture_inputs[image]["hw"]
  assert [c for c, _, _ in got_segs] == categories
  np.testing.assert_array_equal(got_map[:h, :w], seg_map)
  assert not got_map[h:].any() and not got_map[:, w:].any()
  np.testing.assert_array_equal(got_area, np.bincount(seg_map.ravel())[1:])
  # things first (by score), then stuff (by channel)
  things = [t for _, t, _ in got_segs]
  assert things == sorted(things, reverse=True)


@pytest.mark.parametrize("method", METHODS)
def test_fixture_ids_replay_original_files(fixtures_dir, fixture_results, fixture_inputs,
                                           method):
  """numpy.random.seed(0) before each run: IdGenerator(seed=0) reproduces PNG bytes and ids."""
  generator = panoptic_io.IdGenerator(seed=0)
  for index, image in enumerate(IMAGES):
    png, segments_info = panoptic_io.fusion_to_panoptic(
        fixture_results[method][index], fixture_inputs[image]["hw"], generator)
    _, _, ann, ids = _original(fixtures_dir, method, index, image)
    assert [(s["id"], s["category_id"]) for s in segments_info] == \
        [(s["id"], s["category_id"]) for s in ann["segments_info"]]
    original_rgb = np.asarray(Image.open(fixtures_dir / f"panoptic_{method}_{image}.png"))
    np.testing.assert_array_equal(png, original_rgb)
    np.testing.assert_array_equal(panoptic_io.rgb2id(png), ids)


# ----------------------------------------------------------------------------- exact comparisons
RATIO_THRESHOLDS = [0.5, 0.6, 0.2, 0.0, -0.0, 1.0, 1 / 3, 2 / 3, 0.7, 0.1, 0.9, 0.25, 0.3,
                    1e-9, 1e-30, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 0.9999999999999999,
                    math.nextafter(0.6, 1), math.nextafter(0.6, 0), math.nextafter(0.5, 0),
                    math.nextafter(0.5, 1), 1.5, 3.0, -0.5, math.inf, -math.inf, math.nan]


@pytest.fixture(scope="module")
def ratio_fn():
  return jax.jit(fusion_ops.ratio_exceeds, static_argnums=2)


def _expected(a, b, thr, op):
  q = np.asarray(a, np.float64) / np.asarray(b, np.float64)      # the original's float64 division
  return q > thr if op == ">" else q >= thr


def test_ratio_exhaustive_small_areas(ratio_fn):
  """Every 0 <= a <= b <= 300 against Python's float division, '>' and '>='."""
  b = np.repeat(np.arange(1, 301), 301)
  a = np.tile(np.arange(301), 300)
  a, b = a[a <= b].astype(np.int32), b[a <= b].astype(np.int32)
  rng = np.random.default_rng(0)
  for thr in RATIO_THRESHOLDS + list(rng.random(8)):
    for op in (">", ">="):
      got = np.asarray(ratio_fn(a, b, fusion_ops.ratio_bound(thr, op)))
      np.testing.assert_array_equal(got, _expected(a, b, thr, op), err_msg=f"{op} {thr!r}")


def _best_approximations(thr: float, max_den: int) -> list[tuple[int, int]]:
  """Convergents and semiconvergents p/q of thr with q < max_den: the ratios nearest to thr."""
  x = fractions.Fraction(thr)
  out, (h0, h1), (k0, k1) = [], (0, 1), (1, 0)
  while True:
    a = math.floor(x)
    t_max = min(a, (max_den - 1 - k0) // k1) if k1 else a
    # the extreme semiconvergents t*h1 + h0 (t = 1, 2, .., t_max; t = a is the convergent)
    for t in sorted({1, 2, t_max - 1, t_max} & set(range(1, t_max + 1))):
      out.append((t * h1 + h0, t * k1 + k0))
    if t_max < a:
      return out
    h0, h1, k0, k1 = h1, a * h1 + h0, k1, a * k1 + k0
    if x == a:
      return out
    x = 1 / (x - a)


def test_ratio_near_boundary_large_areas(ratio_fn):
  """Ratios within a few ulps of the threshold, areas up to 2^24 - 1."""
  rng = np.random.default_rng(1)
  for thr in [0.5, 0.6, 0.2, 1 / 3, 0.7, 0.1, math.nextafter(0.6, 1)] + list(rng.random(4)):
    pairs = []
    for p, q in _best_approximations(thr, 1 << 24):
      for mult in (1, 2, 3, (1 << 24) // q - 1):
        for da in (-1, 0, 1):
          if 1 <= q * mult < (1 << 24) and 0 <= p * mult + da <= q * mult:
            pairs.append((p * mult + da, q * mult))
    b = rng.integers(1, 1 << 24, 20000)
    a = np.clip(np.floor(thr * b).astype(np.int64) + rng.integers(-2, 3, b.size), 0, b)
    pairs += list(zip(a.tolist(), b.tolist()))
    a, b = (np.asarray(v, np.int32) for v in zip(*pairs))
    for op in (">", ">="):
      got = np.asarray(ratio_fn(a, b, fusion_ops.ratio_bound(thr, op)))
      np.testing.assert_array_equal(got, _expected(a, b, thr, op), err_msg=f"{op} {thr!r}")


def test_score_cut_matches_float64_compare():
  rng = np.random.default_rng(2)
  for thr in [0.5, 0.6, 0.05, 0.0, 1.0, 0.7, 1e-40, 1e39, -0.3] + list(rng.random(20)):
    cut = fusion_ops.score_cut(thr)
    near = np.float32(np.clip(thr, -3e38, 3e38))
    scores = np.array([near, np.nextafter(near, np.float32(-np.inf)),
                       np.nextafter(near, np.float32(np.inf)), cut, np.float32(0.0),
                       np.float32(1.0), np.float32(np.inf)] + list(rng.random(50)), np.float32)
    expected = np.array([not float(s) < thr for s in scores])
    np.testing.assert_array_equal(~(scores < cut), expected, err_msg=repr(thr))


# ----------------------------------------------------------------------------- hand-drawn cases
def _case(masks, scores, labels, relation=None, occlusion=None, semantic=None, valid=None):
  masks = np.asarray(masks, bool)
  k, h, w = masks.shape
  return dict(masks=masks, scores=np.asarray(scores, np.float32),
              labels=np.asarray(labels, np.int32),
              relation=np.zeros(k, np.float32) if relation is None else
              np.asarray(relation, np.float32),
              occlusion=np.zeros((k, k), bool) if occlusion is None else
              np.asarray(occlusion, bool),
              semantic=np.zeros((h, w), np.int32) if semantic is None else
              np.asarray(semantic, np.int32),
              valid=np.ones(k, bool) if valid is None else np.asarray(valid, bool))


def _strip(h: int, w: int, x0: int, x1: int, row: int = 0) -> np.ndarray:
  """A 1-pixel-high strip of columns [x0, x1) on an h x w canvas."""
  m = np.zeros((h, w), bool)
  m[row, x0:x1] = True
  return m


def _fuse_both(method, case, **cfg):
  """(jitted result, reference result), asserting that they agree; two tile settings."""
  ref, draws = run_reference(method, case, cfg)
  results = []
  for tile in [(1, 4), None]:
    got = fusion_ops.fuse(method, case["masks"], case["scores"], case["labels"], case["semantic"],
                          valid=case["valid"], relation=case["relation"],
                          occlusion=case["occlusion"], tile=tile, **cfg)
    assert_same(got, ref, draws, context=f"{method} tile={tile}")
    results.append(got)
  return results[0], ref


def _thing_instances(ref) -> list[int]:
  return [s["instance"] for s in ref.segments_info if s["isthing"]]


@pytest.mark.parametrize("overlap,kept", [(6, [0, 1]), (7, [0])])
def test_rap_same_label_test_is_strict(overlap, kept):
  """B (area 10, same label as A) overlaps A by 6 (= 0.6: kept) or 7 (> 0.6: skipped).

      row 0: A A A A A A A A A A . . . .        A: area 10, relation 5 (far)
             . . . . B B B B B B B B B B        B: overlap = 10 - x0 with A, relation 0 (near)
  """
  a, b = _strip(1, 14, 0, 10), _strip(1, 14, 10 - overlap, 20)
  case = _case([a, b], [0.9, 0.8], [1, 1], relation=[5.0, 0.0])
  _, ref = _fuse_both("rap", case, confidence_thr=0.5, overlap_thr=0.6, large_overlap_thr=0.7,
                      stuff_area_limit=1)
  assert _thing_instances(ref) == kept


@pytest.mark.parametrize("id_area,kept", [(10, [0]), (11, [0, 1])])
def test_rap_large_overlap_is_two_sided_ge(id_area, kept):
  """ov/area = 5/10 = 0.5 and ov/id_area = 5/10 (>= 0.5 both: duplicate) or 5/11 (not).

  A (label 1, area id_area) and B (label 2, area 10) share 5 pixels; B is nearer.
  """
  a, b = _strip(1, 30, 0, id_area), _strip(1, 30, id_area - 5, id_area + 5)
  case = _case([a, b], [0.9, 0.8], [1, 2], relation=[5.0, 0.0])
  _, ref = _fuse_both("rap", case, overlap_thr=0.4, large_overlap_thr=0.5, stuff_area_limit=1)
  assert _thing_instances(ref) == kept


@pytest.mark.parametrize("relation_b,kept", [(5.0, [0]), (4.0, [0, 1]),
                                             (np.nextafter(np.float32(5), np.float32(6)), [0])])
def test_rap_remaining_share_le_and_strict_relation(relation_b, kept):
  """B (area 10) overlaps far-away A by 5: it takes them only if strictly nearer.

  Equal relation values keep A's pixels: B's share 5/10 <= 0.5 -> skipped; nearer -> 10/10.
  """
  a, b = _strip(1, 20, 0, 10), _strip(1, 20, 5, 15)
  case = _case([a, b], [0.9, 0.8], [1, 2], relation=[5.0, relation_b])
  _, ref = _fuse_both("rap", case, overlap_thr=0.5, large_overlap_thr=0.9, stuff_area_limit=1)
  assert _thing_instances(ref) == kept


def test_rap_steals_and_refines_emptied_segment():
  """C (nearest) takes all of A's pixels: A is dropped, its id stays consumed.

      A: cols 0-3 (rel 5), B: cols 4-11 (rel 5), C: cols 0-7 (rel 0): C takes A and half of B
  """
  a, b, c = _strip(1, 12, 0, 4), _strip(1, 12, 4, 12), _strip(1, 12, 0, 8)
  case = _case([a, b, c], [0.9, 0.8, 0.7], [1, 2, 3], relation=[5.0, 5.0, 0.0])
  got, ref = _fuse_both("rap", case, overlap_thr=0.4, large_overlap_thr=0.9, stuff_area_limit=1)
  assert _thing_instances(ref) == [1, 2]
  np.testing.assert_array_equal(np.asarray(got.accepted_segment[:3]), [-1, 0, 1])


@pytest.mark.parametrize("overlap,occludes,kept_pixels", [
    (2, True, 10), (2, False, 8), (1, True, 9)])
def test_ocfusion_pair_test_ge_or(overlap, occludes, kept_pixels):
  """B (area 10) overlaps A (area 20) by 2 (2/10 >= 0.2: judged) or 1 (neither ratio >= 0.2).

  Judged and B occludes A: B takes the overlap back; otherwise B keeps only free pixels.
  """
  a, b = _strip(1, 40, 0, 20), _strip(1, 40, 20 - overlap, 30 - overlap)
  occlusion = np.zeros((2, 2), bool)
  occlusion[1, 0] = occludes
  case = _case([a, b], [0.9, 0.8], [1, 1], occlusion=occlusion)
  got, ref = _fuse_both("ocfusion", case, overlap_thr=0.5, stuff_area_limit=1)
  assert _thing_instances(ref) == [0, 1]
  assert int(got.segment_area[1]) == kept_pixels


@pytest.mark.parametrize("limit,kept", [(6, True), (7, False)])
def test_stuff_area_limit_ge(limit, kept):
  """Stuff channel 5 has 10 pixels, 4 under a thing: 6 left (kept iff 6 >= limit)."""
  semantic = np.zeros((1, 12), np.int32)
  semantic[0, :10] = 5
  case = _case([_strip(1, 12, 0, 4)], [0.9], [1], semantic=semantic)
  _, ref = _fuse_both("heuristic", case, stuff_area_limit=limit)
  stuff = [s["category_id"] for s in ref.segments_info if not s["isthing"]]
  assert stuff == ([int(cats.SEMANTIC_TO_COCO[5])] if kept else [])


def test_score_threshold_float32_vs_float64():
  """float32(0.6) = 0.6000000238 >= 0.6 is kept, the float32 just below is not."""
  below = np.nextafter(np.float32(0.6), np.float32(0))
  masks = [_strip(1, 12, 0, 3), _strip(1, 12, 3, 6), _strip(1, 12, 6, 9)]
  case = _case(masks, [np.float32(0.6), below, np.float32(0.6)], [1, 2, 3])
  _, ref = _fuse_both("heuristic", case, confidence_thr=0.6, stuff_area_limit=1)
  assert _thing_instances(ref) == [0, 2]


def test_heuristic_overlap_and_tied_scores():
  """Equal scores keep detection order; the later one only gets free pixels (area 10 - 4)."""
  a, b = _strip(1, 20, 0, 10), _strip(1, 20, 6, 16)
  case = _case([a, b], [0.7, 0.7], [1, 1])
  got, ref = _fuse_both("heuristic", case, overlap_thr=0.4, stuff_area_limit=1)
  assert _thing_instances(ref) == [0, 1]
  assert np.asarray(got.segment_area[:2]).tolist() == [10, 6]


def test_heuristic_keeps_a_segment_left_without_pixels():
  """overlap_thr = 1: B lies inside A (1.0 > 1.0 is False) and is appended with no pixel left;
  the heuristic has no refinement, so segments_info keeps it (area 0)."""
  a, b = _strip(1, 12, 0, 8), _strip(1, 12, 2, 5)
  case = _case([a, b], [0.9, 0.8], [1, 2])
  got, ref = _fuse_both("heuristic", case, overlap_thr=1.0, stuff_area_limit=1)
  assert _thing_instances(ref) == [0, 1]
  assert np.asarray(got.segment_area[:2]).tolist() == [8, 0]
  png, info = panoptic_io.fusion_to_panoptic(got, (1, 12), panoptic_io.IdGenerator(seed=0))
  assert [s["area"] for s in info] == [8, 0] and info[1]["bbox"] == [0, 0, 0, 0]


# ----------------------------------------------------------------------------- random agreement
RANDOM_CANVAS = (24, 32)
RANDOM_K = 8
RANDOM_CONFIGS = {
    # name: (thresholds, tile)
    "default": (dict(confidence_thr=0.5, overlap_thr=0.5, large_overlap_thr=0.5,
                     stuff_area_limit=12, oc_pair_overlap_thr=0.2), (8, 8)),
    "rap_yaml": (dict(confidence_thr=0.6, overlap_thr=0.6, large_overlap_thr=0.5,
                      stuff_area_limit=40, oc_pair_overlap_thr=0.2), None),
    "odd": (dict(confidence_thr=0.0, overlap_thr=0.25, large_overlap_thr=0.75,
                 stuff_area_limit=0, oc_pair_overlap_thr=0.5), (6, 16)),
}


def random_case(rng: np.random.Generator, k: int = RANDOM_K, shape=RANDOM_CANVAS) -> dict:
  """Random but adversarial inputs: ties, duplicates, zero-area and invalid slots."""
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  masks = np.zeros((k, h, w), bool)
  for i in range(k):
    kind = rng.integers(6)
    y0, y1 = np.sort(rng.integers(0, h + 1, 2))
    x0, x1 = np.sort(rng.integers(0, w + 1, 2))
    box = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    if kind == 0:                                  # empty (zero area)
      continue
    if kind == 1:                                  # box
      masks[i] = box
    elif kind == 2:                                # ellipse
      cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2 + 0.5, (x1 - x0) / 2 + 0.5
      masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    elif kind == 3:                                # noisy blob
      masks[i] = box & (rng.random((h, w)) < 0.7)
    elif i > 0:                                    # duplicate / part of an earlier mask
      j = rng.integers(i)
      masks[i] = masks[j] if kind == 4 else masks[j] & box
  score_pool = np.array([0.3, 0.5, 0.6, 0.6, 0.7, 0.9, 0.9, 1.0], np.float32)
  scores = np.where(rng.random(k) < 0.6, rng.choice(score_pool, k),
                    rng.random(k)).astype(np.float32)
  relation_pool = np.array([-1.0, 0.0, 0.0, 0.5, 2.0, np.inf], np.float32)
  relation = np.where(rng.random(k) < 0.6, rng.choice(relation_pool, k),
                      rng.normal(0, 2, k)).astype(np.float32)
  valid = rng.random(k) < rng.choice([0.0, 0.7, 1.0, 1.0])          # all / none / some
  semantic = np.kron(rng.choice([0, 1, 2, 3, 7, 53, 54], (3, 4)),
                     np.ones((h // 3, w // 4), np.int32)).astype(np.int32)
  semantic[rng.random((h, w)) < 0.1] = rng.integers(0, 55)
  return dict(masks=masks, scores=scores,
              labels=rng.choice(np.array([1, 2, 3], np.int32), k).astype(np.int32),
              relation=relation, occlusion=rng.random((k, k)) < 0.5, valid=valid,
              semantic=semantic)


def stack_cases(cases: list[dict]) -> dict:
  return {key: np.stack([c[key] for c in cases]) for key in cases[0]}


NUM_RANDOM = 400       # per (method, config): 3 x 3 x 400 = 3600 random cases


@pytest.mark.parametrize("config_name", list(RANDOM_CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_random_agreement_with_reference(method, config_name):
  thresholds, tile = RANDOM_CONFIGS[config_name]
  rng = np.random.default_rng(zlib.crc32(f"{method}/{config_name}".encode()))
  cases = [random_case(rng) for _ in range(NUM_RANDOM)]
  batch = stack_cases(cases)
  got = fusion_ops.fuse(method, batch["masks"], batch["scores"], batch["labels"],
                        batch["semantic"], valid=batch["valid"], relation=batch["relation"],
                        occlusion=batch["occlusion"], tile=tile, batched=True,
                        batch_mode="vmap", **thresholds)
  got = jax.device_get(got)
  for b, case in enumerate(cases):
    ref, draws = run_reference(method, case, thresholds)
    assert_same(got[b], ref, draws, context=f"{method} {config_name} case {b}")


def test_random_agreement_lax_map_batching():
  """The other batching mode gives the same results (a few cases, every method)."""
  rng = np.random.default_rng(7)
  cases = [random_case(rng) for _ in range(6)]
  batch = stack_cases(cases)
  thresholds, _ = RANDOM_CONFIGS["default"]
  for method in METHODS:
    got = fusion_ops.fuse(method, batch["masks"], batch["scores"], batch["labels"],
                          batch["semantic"], valid=batch["valid"], relation=batch["relation"],
                          occlusion=batch["occlusion"], tile=(8, 8), batched=True,
                          batch_mode="map", **thresholds)
    for b, case in enumerate(cases):
      ref, draws = run_reference(method, case, thresholds)
      assert_same(got[b], ref, draws, context=f"{method} map case {b}")


def _windows(masks: np.ndarray, rng: np.random.Generator, slack: int) -> np.ndarray:
  """[K, 4] (y0, x0, y1, x1) half-open boxes around each mask, grown by up to `slack` pixels."""
  k, h, w = masks.shape
  out = np.zeros((k, 4), np.int32)
  for i in range(k):
    ys, xs = np.nonzero(masks[i])
    if len(ys):
      grow = rng.integers(0, slack + 1, 4)
      out[i] = (ys.min() - grow[0], xs.min() - grow[1],
                ys.max() + 1 + grow[2], xs.max() + 1 + grow[3])
    else:                                          # empty mask: empty (or any) window
      out[i] = rng.integers(0, 10, 4) if slack else 0
  return out


@pytest.mark.parametrize("slack", [0, 40])
def test_mask_windows_give_the_same_result(slack):
  """Paste windows only replace the tile search: tight, loose and out-of-canvas windows."""
  rng = np.random.default_rng(8 + slack)
  thresholds, _ = RANDOM_CONFIGS["default"]
  cases = [random_case(rng) for _ in range(60)]
  batch = stack_cases(cases)
  windows = np.stack([_windows(c["masks"], rng, slack) for c in cases])
  for method in METHODS:
    got = fusion_ops.fuse(method, batch["masks"], batch["scores"], batch["labels"],
                          batch["semantic"], valid=batch["valid"], relation=batch["relation"],
                          occlusion=batch["occlusion"], mask_windows=windows, tile=(8, 8),
                          batched=True, batch_mode="map", **thresholds)
    for b, case in enumerate(cases):
      ref, draws = run_reference(method, case, thresholds)
      assert_same(got[b], ref, draws, context=f"{method} windows case {b}")


def test_k_at_limit_all_valid_and_all_invalid():
  rng = np.random.default_rng(3)
  thresholds, _ = RANDOM_CONFIGS["default"]
  full = random_case(rng)
  full["valid"][:] = True
  full["scores"][:] = 0.9                           # every slot takes part
  empty = random_case(rng)
  empty["valid"][:] = False
  for method in METHODS:
    for case in (full, empty):
      ref, draws = run_reference(method, case, thresholds)
      got = fusion_ops.fuse(method, case["masks"], case["scores"], case["labels"],
                            case["semantic"], valid=case["valid"], relation=case["relation"],
                            occlusion=case["occlusion"], tile=(8, 8), **thresholds)
      assert_same(got, ref, draws, context=method)
  got = fusion_ops.fuse("rap", empty["masks"], empty["scores"], empty["labels"],
                        np.zeros(RANDOM_CANVAS, np.int32), valid=empty["valid"],
                        relation=empty["relation"])
  assert int(got.num_segments) == 0 and not np.asarray(got.segment_map).any()


def test_disable_jit_agrees():
  """The same function run op by op (jax.disable_jit) agrees with the reference."""
  rng = np.random.default_rng(4)
  thresholds, _ = RANDOM_CONFIGS["default"]
  cases = [random_case(rng, k=4, shape=(12, 16)) for _ in range(2)]
  with jax.disable_jit():
    for method in METHODS:
      for case in cases:
        ref, draws = run_reference(method, case, thresholds)
        got = fusion_ops.fuse(method, case["masks"], case["scores"], case["labels"],
                              case["semantic"], valid=case["valid"], relation=case["relation"],
                              occlusion=case["occlusion"], tile=(4, 8), **thresholds)
        assert_same(got, ref, draws, context=f"disable_jit {method}")


def test_negative_zero_and_equal_scores_keep_detection_order():
  masks = np.stack([_strip(1, 8, 0, 4)] * 3)
  case = _case(masks, [-0.0, 0.0, -0.0], [1, 2, 3])   # sort keys 0.0, -0.0, 0.0: a tie
  _, ref = _fuse_both("heuristic", case, confidence_thr=0.0, overlap_thr=0.5, stuff_area_limit=1)
  assert _thing_instances(ref) == [0]


# ----------------------------------------------------------------------------- API and errors
def test_fuse_with_config_reads_config_fusion():
  from configs import common
  config = common.get_config()
  config.fusion.method = "rap"
  rng = np.random.default_rng(5)
  case = random_case(rng)
  batch = stack_cases([case])
  got = fusion_ops.fuse_with_config(config.fusion, batch["masks"], batch["scores"],
                                    batch["labels"], batch["semantic"], valid=batch["valid"],
                                    relation=batch["relation"], tile=(8, 8))
  ref, draws = run_reference("rap", case, dict(confidence_thr=0.5, overlap_thr=0.5,
                                               large_overlap_thr=0.5, stuff_area_limit=4096))
  assert_same(got[0], ref, draws)


def test_malformed_inputs_raise():
  case = random_case(np.random.default_rng(6))
  args = (case["masks"], case["scores"], case["labels"], case["semantic"])
  with pytest.raises(ValueError, match="unknown fusion method"):
    fusion_ops.fuse("panoptic", *args)
  with pytest.raises(ValueError, match="needs relation"):
    fusion_ops.fuse("rap", *args)
  with pytest.raises(ValueError, match="needs the occlusion"):
    fusion_ops.fuse("ocfusion", *args)
  with pytest.raises(ValueError, match="scores has shape"):
    fusion_ops.fuse("heuristic", case["masks"], case["scores"][:3], case["labels"],
                    case["semantic"])
  with pytest.raises(ValueError, match="semantic has shape"):
    fusion_ops.fuse("heuristic", *args[:3], case["semantic"][:5])
  with pytest.raises(ValueError, match="occlusion has shape"):
    fusion_ops.fuse("ocfusion", *args, occlusion=case["occlusion"][:2])
  with pytest.raises(ValueError, match="masks must be"):
    fusion_ops.fuse("heuristic", case["masks"][0], *args[1:])
  with pytest.raises(ValueError, match="masks must be bool"):
    fusion_ops.fuse("heuristic", case["masks"].astype(np.uint8), *args[1:])
  with pytest.raises(ValueError, match="batch_mode"):
    fusion_ops.fuse("heuristic", *(x[None] for x in args), batched=True, batch_mode="pmap")
  with pytest.raises(ValueError, match="tile"):
    fusion_ops.fuse("heuristic", *args, tile=(0, 4))
  with pytest.raises(ValueError, match="mask_windows has shape"):
    fusion_ops.fuse("heuristic", *args, mask_windows=np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match="integer pixel bounds"):
    fusion_ops.fuse("heuristic", *args, mask_windows=np.zeros((RANDOM_K, 4), np.float32))


def test_tile_shape_divides_canvas():
  for h, w in [(800, 1216), (512, 600), (401, 333), (24, 32)]:
    th, tw = fusion_ops.tile_shape(h, w, fusion_ops.DEFAULT_TILE)
    assert h % th == 0 and w % tw == 0
  assert fusion_ops.tile_shape(800, 1216, None) == (800, 1216)


def test_ops_never_import_reference():
  source = pathlib.Path(fusion_ops.__file__).read_text()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
      assert not any("reference" in n for n in names), names
