"""Panoptic ids, PNG/JSON encoding and the predict-mode writer (SPEC §4.2-§4.3)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rap_jax import panoptic_io
from rap_jax.data import categories as cats
from rap_jax.ops import fusion as fusion_ops


def test_rgb2id_id2rgb_round_trip():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 256 ** 3, (7, 9))
  rgb = panoptic_io.id2rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
  np.testing.assert_array_equal(panoptic_io.rgb2id(rgb), ids)
  assert panoptic_io.rgb2id((220, 20, 60)) == 220 + 256 * 20 + 65536 * 60
  assert panoptic_io.id2rgb(220 + 256 * 20 + 65536 * 60) == [220, 20, 60]
  with pytest.raises(ValueError):
    panoptic_io.id2rgb(np.array([[-1]]))


def test_id_generator_rules():
  gen = panoptic_io.IdGenerator(seed=0)
  person = cats.category(1)
  first = gen.get_id(1)
  assert first == panoptic_io.rgb2id(person.color)               # base colour first
  second = panoptic_io.id2rgb(gen.get_id(1))
  assert second != list(person.color)
  assert all(abs(c - b) <= 30 for c, b in zip(second, person.color))
  sky = cats.category(187)                                        # stuff: always its colour
  assert gen.get_id(187) == gen.get_id(187) == panoptic_io.rgb2id(sky.color)
  ids = {gen.get_id(1) for _ in range(200)}
  assert len(ids) == 200                                          # never repeats in a run
  with pytest.raises(KeyError, match="unknown category"):
    gen.get_id(12)


def test_id_generator_replays_legacy_global_rng():
  """seed=0 draws exactly what the original drew after numpy.random.seed(0)."""
  seq = [1, 1, 1, 47, 47, 187, 1, 62, 62]
  ours = panoptic_io.IdGenerator(seed=0)
  expected = [ours.get_id(c) for c in seq]
  np.random.seed(0)
  legacy = panoptic_io.IdGenerator(seed=None)                     # global RNG, like the original
  assert [legacy.get_id(c) for c in seq] == expected
  other = panoptic_io.IdGenerator(seed=1)
  assert [other.get_id(c) for c in seq] != expected


def _result(segment_map, categories, things=None, canvas=None):
  """A hand-made one-image FusionResult (numpy) with len(categories) valid segments."""
  n = len(categories)
  s = n + 2
  pad = np.zeros(s - n, np.int32)
  seg = np.asarray(segment_map, np.int32)
  if canvas is not None:
    full = np.zeros(canvas, np.int32)
    full[:seg.shape[0], :seg.shape[1]] = seg
    seg = full
  things = np.asarray([cats.is_thing(c) for c in categories] if things is None else things, bool)
  return fusion_ops.FusionResult(
      segment_map=seg,
      segment_category=np.concatenate([np.asarray(categories, np.int32), pad]),
      segment_is_thing=np.concatenate([np.asarray(things, bool), pad.astype(bool)]),
      segment_instance=np.full(s, -1, np.int32),
      segment_area=np.concatenate([np.bincount(seg.ravel(), minlength=n + 1)[1:n + 1], pad]),
      segment_valid=np.arange(s) < n,
      num_segments=np.int32(n),
      accepted_category=np.concatenate([np.asarray(categories, np.int32)[things], pad]),
      accepted_segment=np.concatenate([np.nonzero(things)[0].astype(np.int32), pad - 1]),
      accepted_valid=np.arange(s) < sum(things))


def test_fusion_to_panoptic_areas_and_boxes():
  seg = np.zeros((6, 8), np.int32)
  seg[1:3, 2:5] = 1           # person: x 2..4, y 1..2
  seg[4, 7] = 2               # person: a single pixel
  seg[5, 0:8] = 3             # sky
  seg[0, 0] = 1               # person again: its box grows to x 0..4, y 0..2
  result = _result(seg, [1, 1, 187], canvas=(8, 8))
  png, info = panoptic_io.fusion_to_panoptic(result, (6, 8), panoptic_io.IdGenerator(seed=0))
  assert png.shape == (6, 8, 3) and png.dtype == np.uint8
  assert [s["category_id"] for s in info] == [1, 1, 187]
  assert [s["area"] for s in info] == [7, 1, 8]
  assert [s["bbox"] for s in info] == [[0, 0, 5, 3], [7, 4, 1, 1], [0, 5, 8, 1]]
  assert all(s["iscrowd"] == 0 for s in info)
  ids = panoptic_io.rgb2id(png)
  for s in info:                                  # PNG ids <-> JSON, brute force boxes
    ys, xs = np.nonzero(ids == s["id"])
    assert len(ys) == s["area"]
    assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
  assert set(np.unique(ids)) == {0} | {s["id"] for s in info}


def test_fusion_to_panoptic_replays_emptied_segment_ids():
  """A thing accepted then emptied consumed an id: the next person gets the third colour."""
  seg = np.zeros((2, 2), np.int32)
  seg[0, 0] = 1
  result = _result(seg, [1])
  result = result.replace(accepted_category=np.array([1, 1, 0], np.int32),
                          accepted_segment=np.array([-1, 0, -1], np.int32),
                          accepted_valid=np.array([True, True, False]))
  _, info = panoptic_io.fusion_to_panoptic(result, (2, 2), panoptic_io.IdGenerator(seed=0))
  replay = panoptic_io.IdGenerator(seed=0)
  replay.get_id(1)                                # the emptied one
  assert info[0]["id"] == replay.get_id(1)


def test_fusion_to_panoptic_errors():
  seg = np.zeros((4, 4), np.int32)
  seg[3, 3] = 1
  gen = panoptic_io.IdGenerator()
  with pytest.raises(ValueError, match="outside the image"):
    panoptic_io.fusion_to_panoptic(_result(seg, [1]), (3, 3), gen)
  with pytest.raises(ValueError, match="does not fit"):
    panoptic_io.fusion_to_panoptic(_result(seg, [1]), (5, 4), gen)
  batched = _result(seg, [1])
  batched = batched.replace(segment_map=batched.segment_map[None])
  with pytest.raises(ValueError, match="one image"):
    panoptic_io.fusion_to_panoptic(batched, (4, 4), gen)
  wrong_area = _result(seg, [1]).replace(segment_area=np.array([5, 0, 0], np.int32))
  with pytest.raises(ValueError, match="areas"):
    panoptic_io.fusion_to_panoptic(wrong_area, (4, 4), gen)


def test_writer_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  writer = panoptic_io.PanopticWriter(tmp_path, seed=0)
  expected = {}
  for image_id, stem in [(1, "a"), (7, "b")]:
    seg = rng.integers(0, 4, (10, 12)).astype(np.int32)
    seg[0, :4] = [1, 2, 3, 0]
    result = _result(seg, [1, 1, 187], canvas=(16, 16))
    annotation = writer.add(image_id, stem, result, (10, 12))
    expected[stem] = (seg, annotation)
  path = writer.close()
  assert path == tmp_path / "panoptic.json"
  content = json.loads(path.read_text())
  assert content["categories"] == cats.categories_json()
  assert [a["image_id"] for a in content["annotations"]] == [1, 7]
  assert [a["file_name"] for a in content["annotations"]] == ["a.png", "b.png"]
  all_ids = []
  for ann in content["annotations"]:
    seg, _ = expected[ann["file_name"][:-4]]
    ids = panoptic_io.read_panoptic_png(tmp_path / "panoptic" / ann["file_name"])
    assert ids.shape == (10, 12)
    for k, s in enumerate(ann["segments_info"]):
      np.testing.assert_array_equal(ids == s["id"], seg == k + 1)
      assert s["area"] == int((seg == k + 1).sum())
      assert set(s) == {"id", "category_id", "area", "bbox", "iscrowd"}
      all_ids.append(s["id"])
  assert len(set(all_ids)) == len(all_ids) - 1    # ids unique across images, but sky repeats
  assert not list(tmp_path.rglob("*.tmp"))        # atomic writes leave nothing behind
  with pytest.raises(ValueError, match="share the output name"):
    writer.add(3, "a", _result(np.zeros((2, 2)), []), (2, 2))
  with pytest.raises(ValueError, match="invalid file stem"):
    writer.add(3, "x/y", _result(np.zeros((2, 2)), []), (2, 2))


def test_png_writer_is_atomic_and_validates(tmp_path):
  target = tmp_path / "p.png"
  panoptic_io.write_panoptic_png(target, np.zeros((3, 3, 3), np.uint8))
  assert Image.open(target).size == (3, 3)
  with pytest.raises(ValueError, match="uint8"):
    panoptic_io.write_panoptic_png(tmp_path / "q.png", np.zeros((3, 3), np.int32))
  assert not (tmp_path / "q.png").exists() and not list(tmp_path.glob(".*tmp"))
