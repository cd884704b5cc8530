"""Segment ids id-for-id with the original's run (SPEC §4.3), discarded segments included.

The original draws a colour for every instance its fusion accepts; RAP and OCFusion later drop the
segments that lost all their pixels, and those draws stay consumed (rap_jax/reference/ids.py has
the rule with the original's line numbers). Expected ids come from rap_jax.reference: the plain
fusion loops with an independent panopticapi id generator on numpy's seeded global RNG; the ids
under test come from the jitted fusion + `panoptic_io.fusion_to_panoptic` (one generator per run).
"""
from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest

from rap_jax import panoptic_io
from rap_jax.data import categories as cats
from rap_jax.ops import fusion as fusion_ops
from rap_jax.reference import ids as ids_ref

METHODS = ("heuristic", "rap", "ocfusion")
PERSON, CAR, DOG = 1, 3, 18
THRESHOLDS = dict(confidence_thr=0.5, overlap_thr=0.5, large_overlap_thr=0.5,
                  stuff_area_limit=6)
H, W = 6, 20


def _box(y0, y1, x0, x1, shape=(H, W)) -> np.ndarray:
  m = np.zeros(shape, bool)
  m[y0:y1, x0:x1] = True
  return m


def _image(instances, semantic, k: int) -> dict:
  """instances: (mask, score, label, relation, occludes: {detection index: bool})."""
  n = len(instances)
  occlusion = np.zeros((k, k), bool)
  for i, (*_, front_of) in enumerate(instances):
    for j, v in front_of.items():
      occlusion[i, j] = v
  pad = k - n
  return dict(
      masks=np.concatenate([np.stack([x[0] for x in instances]),
                            np.zeros((pad,) + semantic.shape, bool)]),
      scores=np.array([x[1] for x in instances] + [0.0] * pad, np.float32),
      labels=np.array([x[2] for x in instances] + [PERSON] * pad, np.int32),
      relation=np.array([x[3] for x in instances] + [0.0] * pad, np.float32),
      occlusion=occlusion, valid=np.arange(k) < n, semantic=semantic.astype(np.int32))


def discard_scenario(k: int = 10) -> list[dict]:
  """Two images of one run. Image 1, detection order = score order:

    0 A person .95 rows 0-1 cols 0-3 (8 px), rel 1.0: accepted (draw: person base colour);
      RAP/OCFusion: B then takes all its pixels, so A is dropped after drawing
    1 B person .90 rows 0-3 cols 0-9 (40 px), rel 0.2, in front of A: accepted (person jitter 1)
    2 C person .85 = B's mask, rel 0.1: rejected (same label / overlap / share), no draw
    3 D dog    .80 = B's mask: RAP duplicate, heuristic overlap, OCFusion share: no draw
    4 E person .30: below the confidence threshold, no draw
    5 F person .70, zero area: no draw
    6 G car    .75 rows 0-5 cols 8-13, rel 0.5: accepted (car base colour)
    7 H person .65 rows 0-5 cols 14-19, rel 0.0: accepted (person jitter 2)
  Stuff: channel 1 (6 px, kept at limit 6), channel 2 (5 px, dropped: no draw either way).
  Image 2 repeats the pattern with cars (the dropped car consumed a draw) and more persons.
  """
  sem1 = np.zeros((H, W), np.int32)
  sem1[4:6, 0:3] = 1                      # 6 free pixels: kept
  sem1[5, 3:8] = 2                        # 5 free pixels: below the limit
  b = _box(0, 4, 0, 10)
  image1 = [(_box(0, 2, 0, 4), 0.95, PERSON, 1.0, {}),
            (b, 0.90, PERSON, 0.2, {0: True}),
            (b, 0.85, PERSON, 0.1, {1: False}),
            (b, 0.80, DOG, 0.3, {1: False}),
            (_box(4, 6, 0, 6), 0.30, PERSON, -5.0, {}),
            (np.zeros((H, W), bool), 0.70, PERSON, 0.0, {}),
            (_box(0, 6, 8, 14), 0.75, CAR, 0.5, {}),
            (_box(0, 6, 14, 20), 0.65, PERSON, 0.0, {})]
  sem2 = np.zeros((H, W), np.int32)
  sem2[:, 16:20] = 3                      # 24 px, partly under the last person
  c = _box(0, 5, 2, 12)
  image2 = [(_box(1, 3, 3, 7), 0.99, CAR, 2.0, {}),
            (c, 0.97, CAR, -1.0, {0: True}),
            (_box(0, 6, 12, 18), 0.96, PERSON, 0.0, {}),
            (_box(5, 6, 0, 20), 0.60, PERSON, 0.5, {})]
  return [_image(image1, sem1, k), _image(image2, sem2, k)]


def fuse_run(method: str, images: list[dict], **thresholds) -> list[fusion_ops.FusionResult]:
  batch = {key: np.stack([x[key] for x in images]) for key in images[0]}
  out = fusion_ops.fuse(method, batch["masks"], batch["scores"], batch["labels"],
                        batch["semantic"], valid=batch["valid"], relation=batch["relation"],
                        occlusion=batch["occlusion"], batched=True, **thresholds)
  out = jax.device_get(out)
  return [out[i] for i in range(len(images))]


def writer_ids(results, shapes, seed: int = 0):
  """The writer's (ids map, segments_info) per image, one generator for the run."""
  generator = panoptic_io.IdGenerator(seed=seed)
  out = []
  for result, hw in zip(results, shapes):
    png, info = panoptic_io.fusion_to_panoptic(result, hw, generator)
    out.append((panoptic_io.rgb2id(png), info))
  return out


def assert_ids_match(method, images, results, seed: int = 0, **thresholds):
  expected, draws = ids_ref.original_run(method, images, seed=seed, **thresholds)
  got = writer_ids(results, [x["semantic"].shape for x in images], seed=seed)
  for k, (ref, (id_map, info)) in enumerate(zip(expected, got)):
    assert [(s["id"], s["category_id"]) for s in info] == \
        [(s["id"], s["category_id"]) for s in ref.segments_info], (method, k)
    np.testing.assert_array_equal(id_map, ref.pan, err_msg=f"{method} image {k}")
  return expected, draws


# ----------------------------------------------------------------------------- the generator
def test_reference_generator_is_panopticapi_on_the_global_rng():
  """Base colour first, then jitter around it; the stuff stage draws nothing from the RNG."""
  with ids_ref.seeded_global_rng(0):
    gen = ids_ref.PanopticApiIdGenerator()
    first = gen.get_id(PERSON)
    state = np.random.get_state()[1].copy()
    sky = gen.get_id(187)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    second = gen.get_id(PERSON)
    jitter = np.random.RandomState(0).randint(-30, 31, 3)
  person = cats.category(PERSON).color
  assert first == panoptic_io.rgb2id(person)
  assert sky == panoptic_io.rgb2id(cats.category(187).color)
  expected = np.clip(np.asarray(person) + jitter, 0, 255)
  assert second == panoptic_io.rgb2id(expected)


def test_writer_generator_equals_reference_generator():
  rng = np.random.default_rng(3)
  sequence = rng.choice([PERSON, PERSON, CAR, DOG, 187, 44, 62], 300).tolist()
  ours = panoptic_io.IdGenerator(seed=5)
  with ids_ref.seeded_global_rng(5):
    ref = ids_ref.PanopticApiIdGenerator()
    expected = [ref.get_id(c) for c in sequence]
  assert [ours.get_id(c) for c in sequence] == expected


# ----------------------------------------------------------------------------- discarded segments
@pytest.mark.parametrize("method", METHODS)
def test_discarded_segments_consume_ids_like_the_original(method):
  images = discard_scenario()
  results = fuse_run(method, images, **THRESHOLDS)
  expected, draws = assert_ids_match(method, images, results, **THRESHOLDS)
  things = [[s["category_id"] for s in ref.segments_info if s["isthing"]] for ref in expected]
  thing_draws = [[c for c in d if cats.is_thing(c)] for d in draws]
  # the scenario does what its docstring says
  assert thing_draws[0] == [PERSON, PERSON, CAR, PERSON]
  if method == "heuristic":                      # no refinement: every draw is a segment
    assert things == thing_draws
  else:                                          # A (person) and the first car were dropped
    assert things == [[PERSON, CAR, PERSON], [CAR, PERSON, PERSON]]
    assert thing_draws[1] == [CAR, CAR, PERSON, PERSON]
    # ... so replaying only the surviving segments would give other ids
    naive = panoptic_io.IdGenerator(seed=0)
    naive_ids = [naive.get_id(c) for image in expected for c in
                 (s["category_id"] for s in image.segments_info)]
    real_ids = [s["id"] for image in expected for s in image.segments_info]
    assert naive_ids != real_ids
  stuff = [s["category_id"] for s in expected[0].segments_info if not s["isthing"]]
  assert stuff == [int(cats.SEMANTIC_TO_COCO[1])]     # channel 2 (5 px) dropped


def test_discarded_draws_are_reported_by_the_fusion():
  """accepted_* lists every draw of a thing in order, -1 for the dropped segments."""
  images = discard_scenario()
  for method in ("rap", "ocfusion"):
    results = fuse_run(method, images, **THRESHOLDS)
    _, draws = ids_ref.original_run(method, images, **THRESHOLDS)
    for result, d in zip(results, draws):
      n = int(result.accepted_valid.sum())
      assert result.accepted_category[:n].tolist() == [c for c in d if cats.is_thing(c)]
    assert results[0].accepted_segment[:4].tolist() == [-1, 0, 1, 2]
    assert results[1].accepted_segment[:4].tolist() == [-1, 0, 1, 2]


# ----------------------------------------------------------------------------- random runs
def random_image(rng: np.random.Generator, k: int = 8, shape=(12, 16)) -> dict:
  """Few categories, big overlapping masks, near relation values: many draws and drops."""
  h, w = shape
  masks = np.zeros((k, h, w), bool)
  for i in range(k):
    y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    masks[i, y0:y1, x0:x1] = True
    if rng.random() < 0.2:
      masks[i] &= rng.random((h, w)) < 0.8
    if i and rng.random() < 0.15:
      masks[i] = masks[rng.integers(i)]
  semantic = np.kron(rng.choice([0, 1, 2, 5, 54], (2, 2)), np.ones((h // 2, w // 2), np.int32))
  return dict(masks=masks,
              scores=rng.choice(np.array([0.4, 0.6, 0.7, 0.8, 0.9, 0.95], np.float32), k),
              labels=rng.choice(np.array([PERSON, PERSON, CAR, DOG], np.int32), k),
              relation=rng.normal(0, 1, k).astype(np.float32),
              occlusion=rng.random((k, k)) < 0.6, valid=rng.random(k) < 0.95,
              semantic=semantic.astype(np.int32))


@pytest.mark.parametrize("method", METHODS)
def test_random_runs_match_the_original_ids(method):
  """A 40-image run per method, one generator: every id equals the original's."""
  rng = np.random.default_rng(zlib.crc32(method.encode()))
  images = [random_image(rng) for _ in range(40)]
  thresholds = dict(THRESHOLDS, stuff_area_limit=10)
  results = fuse_run(method, images, **thresholds)
  _, draws = assert_ids_match(method, images, results, seed=11, **thresholds)
  dropped = sum(len([c for c in d if cats.is_thing(c)]) - int(r.segment_is_thing.sum())
                for d, r in zip(draws, results))
  if method != "heuristic":
    assert dropped > 0                          # the run exercises discarded segments
