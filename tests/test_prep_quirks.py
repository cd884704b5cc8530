"""Each quirk of SPEC §7.1 on the hand-made set ``tests/data/prep_tiny`` (built and explained by
``tests/data/make_prep_tiny.py``), plus the refinement, error messages and matcher corner cases."""
import copy
import importlib.util
import json
import pathlib
import warnings

import numpy as np
import pytest

from rap_jax.data import prep_io
from rap_jax.data import relations as R

TINY = pathlib.Path(__file__).resolve().parent / "data" / "prep_tiny"

# Hand-derived in make_prep_tiny.py's docstring; key order = panoptic image order, then discovery.
EXPECTED = {"4": {"41": [42], "43": [44], "45": [47, 46]}, "1": {"17": [18], "13": [14]},
            "2": {"24": [25]}, "3": {}, "5": {"52": [53], "54": [55]}}


@pytest.fixture(scope="module")
def tiny():
  return prep_io.load_json(TINY / "instances.json"), prep_io.load_json(TINY / "panoptic.json")


def _retrieve(inst, pano, **kw):
  return R.relations_to_json(R.retrieve_relations(inst, pano, TINY / "panoptic", **kw))


def _things(pano, image_id):
  thing = {c["id"] for c in pano["categories"] if c["isthing"]}
  ann = next(a for a in pano["annotations"] if a["image_id"] == image_id)
  return [s for s in ann["segments_info"] if s["category_id"] in thing]


def _instances(inst, image_id):
  return [a for a in inst["annotations"] if a["image_id"] == image_id]


def test_committed_files_match_builder(tmp_path):
  spec = importlib.util.spec_from_file_location("make_prep_tiny", TINY.parent / "make_prep_tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.build(tmp_path)
  for name in ("instances.json", "panoptic.json"):
    assert json.loads((tmp_path / name).read_text()) == json.loads((TINY / name).read_text())
  pngs = sorted(p.name for p in (TINY / "panoptic").glob("*.png"))
  assert pngs == sorted(p.name for p in (tmp_path / "panoptic").glob("*.png"))
  for name in pngs:
    np.testing.assert_array_equal(prep_io.read_panoptic_png(tmp_path / "panoptic" / name),
                                  prep_io.read_panoptic_png(TINY / "panoptic" / name))


def test_relations_and_order(tiny):
  got = _retrieve(*tiny)
  assert got == EXPECTED
  # Q10: image keys in panoptic-JSON image order, back ids in discovery order, fronts in discovery
  # order (45: [47, 46], not sorted); images 6, 7, 8 lack one of the two annotations -> no entry;
  # image 3 has both but no relation -> {}.
  assert list(got) == ["4", "1", "2", "3", "5"]
  assert list(got["1"]) == ["17", "13"] and got["4"]["45"] == [47, 46]
  assert R.count_relations(R.relations_from_json(got)) == (4, 9)


def test_workers_do_not_change_output(tiny):
  assert json.dumps(_retrieve(*tiny, workers=2)) == json.dumps(EXPECTED)


def test_ratio_is_strict_and_or(tiny):
  # A/B (11, 12) overlap exactly 0.2 of both masks: not judged at 0.2, judged just below it.
  assert "11" not in _retrieve(*tiny)["1"]
  assert _retrieve(*tiny, ratio=0.19)["1"]["11"] == [12]
  # G/H: 64 px is 0.04 of G and 1.0 of H; the OR makes it judged (present in EXPECTED).
  assert EXPECTED["1"]["17"] == [18]


def test_tie_gives_no_relation(tiny):
  # E/F (15, 16) overlap 50 px (0.5) and lost 50 px each.
  inst, pano = tiny
  ids = prep_io.read_panoptic_png(TINY / "panoptic/tiny_1.png")
  rel = R.image_relations(_instances(inst, 1), _things(pano, 1), ids, [1, 17, 18, 37, 44, 47])
  assert 15 not in rel and 16 not in rel and all(15 not in f and 16 not in f for f in rel.values())


def test_same_bbox_double_and_third_match(tiny):
  inst, pano = tiny
  segs, insts = _things(pano, 2), _instances(inst, 2)
  assert [a["bbox"] for a in insts[:3]] == [[0.0, 0.0, 29.0, 29.0]] * 3  # same bbox
  seg_to_inst, inst_to_seg = R.match_segments(segs, insts)
  # sP -> P (tie: first wins), sQ -> P (second match: both dropped), sR (a kite!) -> P accepted again.
  assert seg_to_inst == {segs[2]["id"]: 21, segs[3]["id"]: 24, segs[4]["id"]: 25}
  assert segs[2]["category_id"] == 38 and insts[0]["category_id"] == 1  # category not checked
  assert list(inst_to_seg) == [21, 24, 25]


def test_crowd_exclusion(tiny):
  inst, pano = tiny
  assert _retrieve(inst, pano)["3"] == {}
  # Without the crowd flags both pairs would be related: W's segment (crowd) hides W...
  pano2 = copy.deepcopy(pano)
  for s in next(a for a in pano2["annotations"] if a["image_id"] == 3)["segments_info"]:
    if s["category_id"] == 18:
      s["iscrowd"] = 0
  assert _retrieve(inst, pano2)["3"] == {"33": [34]}
  # ... and U is a crowd instance (RLE, never rasterised with fillPoly, no crash).
  u = next(a for a in inst["annotations"] if a["id"] == 31)
  assert u["iscrowd"] == 1 and isinstance(u["segmentation"]["counts"], list)


def test_fillpoly_truncates_coordinates(tiny):
  m = R.fillpoly_mask([[7.9, 0.0, 16.0, 0.0, 16.0, 9.0, 7.9, 9.0]], 64, 64)
  assert np.flatnonzero(m.any(axis=0)).tolist() == list(range(7, 17))  # 7.9 -> 7, boundary included
  assert m.sum() == 100
  # with truncation the overlap with A4 (x 0..9) is 30 px (0.3, judged), rounding would give 0.2
  assert EXPECTED["4"]["41"] == [42]
  np.testing.assert_array_equal(R.fillpoly_mask([[0.0, 0.0, 9.0, 0.0, 9.0, 9.0, 0.0, 9.0]], 12, 12)[:10, :10], 1)


def test_panoptic_mask_restricted_to_bbox(tiny):
  inst, pano = tiny
  # C4's JSON bbox [30, 0, 5, 20] covers 100 of its 400 visible pixels: D4 is judged in front.
  assert _retrieve(inst, pano)["4"]["43"] == [44]
  pano2 = copy.deepcopy(pano)
  for s in next(a for a in pano2["annotations"] if a["image_id"] == 4)["segments_info"]:
    if s["bbox"] == [30, 0, 5, 20]:
      s["bbox"] = [30, 0, 20, 20]
  got = _retrieve(inst, pano2)["4"]
  assert "43" not in got and got["44"] == [43]


def test_degenerate_polygon_and_rle_instance(tiny):
  inst, pano = tiny
  z1 = next(a for a in inst["annotations"] if a["id"] == 51)
  assert z1["bbox"] == [0.0, 0.0, 0.0, 0.0] and R.fillpoly_mask(z1["segmentation"], 64, 64).sum() == 0
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # the original's 0/0 RuntimeWarning does not happen here
    assert _retrieve(inst, pano)["5"] == {"52": [53], "54": [55]}
  assert R.fillpoly_mask([[]], 8, 8).sum() == 0  # an empty polygon is skipped (OpenCV rejects it)
  assert R.fillpoly_mask([[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0]], 8, 8).sum() == 15  # odd tail ignored: a triangle


def test_matcher_strict_less_and_far_segments():
  insts = [{"id": 1, "bbox": [0, 0, 10, 10]}, {"id": 2, "bbox": [0, 0, 10, 10]},
           {"id": 3, "bbox": [50, 50, 10, 10]}]
  segs = [{"id": 100, "bbox": [1, 1, 10, 10]}, {"id": 200, "bbox": [49, 50, 10, 10]},
          {"id": 300, "bbox": [20000, 0, 5, 5]}]
  seg_to_inst, _ = R.match_segments(segs, insts)
  # tie between 1 and 2 -> 1; segment 300 is >= 9999 away from everything -> unmatched
  assert seg_to_inst == {100: 1, 200: 3}
  # double match drops both, third is accepted, fourth drops again
  s = [{"id": k, "bbox": [0, 0, 10, 10]} for k in (10, 20, 30, 40)]
  assert R.match_segments(s[:2], insts)[0] == {}
  assert R.match_segments(s[:3], insts)[0] == {30: 1}
  assert R.match_segments(s, insts)[0] == {}


def test_refine_adds_overlap_everywhere(tiny, tmp_path):
  inst, _ = tiny
  rel_path, out = tmp_path / "rel.json", tmp_path / "out.json"
  rel_path.write_text(json.dumps(EXPECTED))
  spec = importlib.util.spec_from_file_location(
      "refine", pathlib.Path(__file__).resolve().parents[1] / "scripts/refine_instance_json.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.main(["--instances-json", str(TINY / "instances.json"), "--relations", str(rel_path),
            "--output", str(out)])
  got = json.loads(out.read_text())
  overlap = {a["id"]: a["overlap"] for a in got["annotations"]}
  assert overlap[45] == [47, 46] and overlap[17] == [18] and overlap[31] == [] and overlap[81] == []
  for a, b in zip(got["annotations"], inst["annotations"], strict=True):
    assert list(a)[-1] == "overlap" and {k: v for k, v in a.items() if k != "overlap"} == b


def test_clear_errors(tiny, tmp_path):
  inst, pano = tiny
  with pytest.raises(FileNotFoundError, match="nope.json"):
    prep_io.load_json(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    prep_io.load_json(bad)
  bad.write_text('{"images": []}')
  with pytest.raises(ValueError, match=r"bad.json lacks the key\(s\) \['annotations'\]"):
    prep_io.load_json(bad, "instances JSON", ("images", "annotations"))
  broken = copy.deepcopy(inst)
  del broken["annotations"][0]["bbox"]
  with pytest.raises(ValueError, match="image 1 .*tiny_1.png.*malformed annotation.*bbox"):
    R.retrieve_relations(broken, pano, TINY / "panoptic")
  with pytest.raises(FileNotFoundError, match=r"tiny_\d\.png"):
    R.retrieve_relations(inst, pano, tmp_path)
  folder = tmp_path / "pano"
  folder.mkdir()
  for p in (TINY / "panoptic").glob("*.png"):
    (folder / p.name).write_bytes(p.read_bytes())
  (folder / "tiny_2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  with pytest.raises(ValueError, match="tiny_2.png"):
    R.retrieve_relations(inst, pano, folder)
